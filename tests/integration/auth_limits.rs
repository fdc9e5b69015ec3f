//! Auth, limits and bad input against the real daemon: 401 for missing, wrong and
//! revoked keys; 429 with Retry-After; 400 for bad JSON and parameters; 413.

use crate::common::Daemon;
use hyper::Method;
use serde_json::json;

fn assert_openai_error(r: &crate::common::Resp, status: u16) {
    assert_eq!(r.status, status, "{:?}", r.body);
    let e = &r.body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{:?}",
        r.body
    );
    assert!(
        e["type"].is_string() && e["code"].is_string(),
        "{:?}",
        r.body
    );
    assert!(e.get("param").is_some(), "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_missing_wrong_revoked_and_admin_only() {
    let d = Daemon::in_process("").await;
    let r = d.call(Method::GET, "/v1/credits", None, None).await;
    assert_openai_error(&r, 401);
    let r = d.get("/v1/credits", "sk-spotd-not-a-real-key").await;
    assert_openai_error(&r, 401);
    // A user key is not an admin token.
    let r = d.get("/admin/v1/accounts", &d.demo_key.clone()).await;
    assert_openai_error(&r, 401);

    let (acct, key) = d.account("rev", "5").await;
    assert_eq!(d.get("/v1/credits", &key).await.status, 200);
    let admin = d.admin.clone();
    let info = d.get(&format!("/admin/v1/accounts/{acct}"), &admin).await;
    let key_id = info.body["api_keys"][0]["id"].as_str().unwrap().to_string();
    let rv = d.delete(&format!("/admin/v1/keys/{key_id}"), &admin).await;
    assert_eq!(rv.status, 200, "{:?}", rv.body);
    assert!(rv.body["revoked_at"].is_string());
    assert_openai_error(&d.get("/v1/credits", &key).await, 401);
    // A second key works; the revoked one still does not.
    let nk = d
        .call(
            Method::POST,
            &format!("/admin/v1/accounts/{acct}/keys"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(nk.status, 201, "{:?}", nk.body);
    assert_eq!(
        d.get("/v1/credits", nk.body["key"].as_str().unwrap())
            .await
            .status,
        200
    );
    assert_eq!(d.get("/v1/credits", &key).await.status, 401);
    // Health needs no key.
    assert_eq!(
        d.call(Method::GET, "/healthz", None, None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let d = Daemon::in_process("[limits]\nrequests_per_second = 1\nburst = 3\n").await;
    let key = d.demo_key.clone();
    let mut limited = None;
    for _ in 0..10 {
        let r = d.get("/v1/credits", &key).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("10 quick requests over a burst of 3 must hit the limit");
    assert_openai_error(&r, 429);
    let ra: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&ra), "Retry-After {ra}");
    // Another key has its own budget.
    let (_, other) = d.account("other", "1").await;
    assert_eq!(d.get("/v1/credits", &other).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_or_413_and_changes_nothing() {
    let d = Daemon::in_process("[limits]\nmax_body_bytes = 4096\n").await;
    let key = d.demo_key.clone();
    let send = |body: &'static [u8]| {
        d.call_h(
            Method::POST,
            "/v1/gpus/rentals",
            Some(&key),
            &[],
            Some(body.to_vec()),
        )
    };
    assert_openai_error(&send(b"{not json").await, 400);
    assert_openai_error(&send(b"[]").await, 400);
    assert_openai_error(&send(b"{}").await, 400);
    assert_openai_error(&send(b"{\"offer_id\": 7}").await, 400);
    assert_openai_error(
        &send(b"{\"gpu\": \"H100\", \"max_price_per_hour\": \"cheap\"}").await,
        400,
    );
    assert_openai_error(
        &send(b"{\"gpu\": \"H100\", \"max_price_per_hour\": 0.0000001}").await,
        400,
    );
    assert_openai_error(&send(b"{\"gpu\": \"H100\", \"bogus\": 1}").await, 400);
    assert_openai_error(
        &send(b"{\"gpu\": \"H100\", \"offer_id\": \"x:y\"}").await,
        400,
    );
    let big = vec![b' '; 10_000];
    let r = d
        .call_h(Method::POST, "/v1/gpus/rentals", Some(&key), &[], Some(big))
        .await;
    assert_openai_error(&r, 413);
    for q in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "sort=cheapest",
        "max_price=abc",
        "interruptible=maybe",
        "gpu_count=-1",
        "color=red",
        "cursor=garbage",
    ] {
        let r = d.get(&format!("/v1/gpus/offers?{q}"), &key).await;
        assert_openai_error(&r, 400);
    }
    assert_openai_error(&d.get("/v1/gpus/rentals?state=sleeping", &key).await, 400);
    assert_openai_error(&d.get("/v1/credits/ledger?limit=0", &key).await, 400);
    assert_openai_error(&d.get("/v1/nothing-here", &key).await, 404);
    let admin = d.admin.clone();
    let r = d
        .post(
            "/admin/v1/accounts",
            &admin,
            json!({"name": "", "credit": 1}),
        )
        .await;
    assert_openai_error(&r, 400);
    let r = d
        .post(
            "/admin/v1/accounts",
            &admin,
            json!({"name": "x", "credit": -1}),
        )
        .await;
    assert_openai_error(&r, 400);
    // Nothing was rented, nothing was held.
    assert_eq!(
        d.get("/v1/gpus/rentals", &key).await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, spotd::money::Usd::ZERO);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
