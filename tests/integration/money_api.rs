//! Money rules against the real daemon: insufficient-credit termination that never lets
//! `available` go below zero, and idempotent rent and credit.

use crate::common::{cheapest, usd, Daemon};
use hyper::Method;
use serde_json::json;
use spotd::money::{prorate, Usd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_credit_terminates_before_available_goes_negative() {
    // A 2-second minimum session so the hold is small and the credit runs out fast.
    let d = Daemon::in_process("[billing]\nmin_session_seconds = 2\n").await;
    let admin = d.admin.clone();
    let (_, demo) = (0, d.demo_key.clone());
    let offer = cheapest(&d, &demo, "min_gpu_count=8&gpu=H100").await;
    let price = usd(&offer["price_per_hour"]);
    // Enough for about 5 seconds of this machine.
    let credit = prorate(price, 5);
    let (acct, key) = d.account("short", &credit.to_string()).await;
    assert!(!acct.is_empty());
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let locked = usd(&r.body["price_per_hour"]);

    // Watch the books while it runs out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let end = loop {
        let (_, _, avail) = d.assert_books_balance(&key).await;
        assert!(avail >= Usd::ZERO);
        let x = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
        let st = x.body["state"].as_str().unwrap().to_string();
        if st == "terminating" || st == "terminated" {
            break x.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ran out: {}",
            x.body
        );
        d.pass(250).await;
    };
    assert_eq!(end["termination_reason"], "insufficient_credit", "{end}");
    let cost = usd(&end["cost"]);
    assert!(cost <= credit, "charged {cost} of {credit}");
    assert!(cost > Usd::ZERO);
    let (bal, held, avail) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
    assert!(avail >= Usd::ZERO);
    assert_eq!(bal, credit - cost);
    // Stopped when the next step no longer fit: less than two steps' worth is left.
    assert!(bal < prorate(locked, 2) + Usd(1), "left {bal} unspent");
    d.wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
        .await;
    let _ = admin;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_rent_and_credit() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let admin = d.admin.clone();
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let body = json!({"offer_id": offer["id"], "name": "once"})
        .to_string()
        .into_bytes();
    let h = [("Idempotency-Key", "rent-abc-1")];
    let a = d
        .call_h(
            Method::POST,
            "/v1/gpus/rentals",
            Some(&key),
            &h,
            Some(body.clone()),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let b = d
        .call_h(Method::POST, "/v1/gpus/rentals", Some(&key), &h, Some(body))
        .await;
    assert_eq!(b.status, 201);
    assert_eq!(
        a.body["id"], b.body["id"],
        "the same key answers the same rental"
    );
    let list = d.get("/v1/gpus/rentals", &key).await;
    assert_eq!(
        list.body["data"].as_array().unwrap().len(),
        1,
        "rented once"
    );
    // Same key, other body: 422, nothing new.
    let other = json!({"offer_id": offer["id"], "name": "twice"})
        .to_string()
        .into_bytes();
    let c = d
        .call_h(
            Method::POST,
            "/v1/gpus/rentals",
            Some(&key),
            &h,
            Some(other),
        )
        .await;
    assert_eq!(c.status, 422, "{:?}", c.body);
    assert_eq!(
        d.get("/v1/gpus/rentals", &key).await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Admin credit, twice with one key: credited once.
    let (acct, k2) = d.account("idem", "1").await;
    let path = format!("/admin/v1/accounts/{acct}/credits");
    let cb = json!({"amount": 2.5, "note": "top-up"})
        .to_string()
        .into_bytes();
    let hk = [("Idempotency-Key", "credit-xyz")];
    for _ in 0..3 {
        let r = d
            .call_h(Method::POST, &path, Some(&admin), &hk, Some(cb.clone()))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let (bal, _, _) = d.assert_books_balance(&k2).await;
    assert_eq!(bal, Usd(3_500_000));
    let bad = d
        .call_h(
            Method::POST,
            &path,
            Some(&admin),
            &hk,
            Some(json!({"amount": 9}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(bad.status, 422);
    let (bal, _, _) = d.assert_books_balance(&k2).await;
    assert_eq!(bal, Usd(3_500_000));
    d.delete(
        &format!("/v1/gpus/rentals/{}", a.body["id"].as_str().unwrap()),
        &key,
    )
    .await;
}

/// Creating an account or a key with an Idempotency-Key: one object however often it
/// is retried; the secret is shown once (the replay shows `"key": null`) and never
/// lands in the database in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_account_and_key_creation_never_store_the_secret() {
    let d = Daemon::in_process("").await;
    let admin = d.admin.clone();
    let post = |path: String, idem: &'static str, body: serde_json::Value| {
        let admin = admin.clone();
        let d = &d;
        async move {
            d.call_h(
                Method::POST,
                &path,
                Some(&admin),
                &[("Idempotency-Key", idem)],
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let body = json!({"name": "once", "credit": 1});
    let first = post("/admin/v1/accounts".into(), "acct-once", body.clone()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let secret = first.body["api_key"]["key"].as_str().unwrap().to_string();
    let again = post("/admin/v1/accounts".into(), "acct-once", body).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["api_key"]["id"], first.body["api_key"]["id"]);
    assert_eq!(again.body["api_key"]["key"], serde_json::Value::Null);
    let accounts = d.get("/admin/v1/accounts", &admin).await;
    let named_once = accounts.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "once")
        .count();
    assert_eq!(named_once, 1);
    assert_eq!(d.get("/v1/credits", &secret).await.status, 200);

    // A second key for the account, retried: one key.
    let acct = first.body["id"].as_str().unwrap().to_string();
    let path = format!("/admin/v1/accounts/{acct}/keys");
    let k1 = post(path.clone(), "key-once", json!({})).await;
    assert_eq!(k1.status, 201, "{:?}", k1.body);
    let secret2 = k1.body["key"].as_str().unwrap().to_string();
    let k2 = post(path, "key-once", json!({})).await;
    assert_eq!(k2.status, 201, "{:?}", k2.body);
    assert_eq!(k2.body["id"], k1.body["id"]);
    assert_eq!(k2.body["key"], serde_json::Value::Null);
    let shown = d.get(&format!("/admin/v1/accounts/{acct}"), &admin).await;
    assert_eq!(shown.body["api_keys"].as_array().unwrap().len(), 2);
    assert_eq!(d.get("/v1/credits", &secret2).await.status, 200);

    // Neither secret is in the database file.
    let db = std::fs::read(d.data_dir().join("spotd.redb")).unwrap();
    for s in [&secret, &secret2] {
        assert!(
            !db.windows(s.len()).any(|w| w == s.as_bytes()),
            "a plaintext key in spotd.redb"
        );
    }
}

/// An Idempotency-Key is remembered for 24 h; used again after that it is a new
/// operation with new ids: a new account, a new credit, a new key that can be revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_after_its_24_hours_is_a_new_operation() {
    // Hourly rounds: a day of clock time is a few dozen of them.
    let slow = "[billing]\nmetering_interval_seconds = 3600\n[sandbox]\nrefresh_seconds = 3600\n";
    let d = Daemon::in_process_with(slow, Some((3600, 3600))).await;
    let admin = d.admin.clone();
    let post = |path: String, key: &'static str, body: serde_json::Value| {
        let d = &d;
        let admin = admin.clone();
        async move {
            d.call_h(
                Method::POST,
                &path,
                Some(&admin),
                &[("Idempotency-Key", key)],
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let a1 = post(
        "/admin/v1/accounts".into(),
        "acct-key",
        json!({"name": "team-a", "credit": 1}),
    )
    .await;
    assert_eq!(a1.status, 201, "{:?}", a1.body);
    let again = post(
        "/admin/v1/accounts".into(),
        "acct-key",
        json!({"name": "team-a", "credit": 1}),
    )
    .await;
    assert_eq!(
        again.body["id"], a1.body["id"],
        "a replay within the window"
    );
    d.advance(25 * 3600).await;
    let a2 = post(
        "/admin/v1/accounts".into(),
        "acct-key",
        json!({"name": "team-b", "credit": 2}),
    )
    .await;
    assert_eq!(a2.status, 201, "{:?}", a2.body);
    assert_ne!(a2.body["id"], a1.body["id"], "a new account after 24 h");
    assert_eq!(a2.body["name"], "team-b");

    let id = a2.body["id"].as_str().unwrap().to_string();
    let credits = format!("/admin/v1/accounts/{id}/credits");
    let c1 = post(credits.clone(), "credit-key", json!({"amount": 5})).await;
    assert_eq!(c1.status, 200, "{:?}", c1.body);
    d.advance(25 * 3600).await;
    let c2 = post(credits.clone(), "credit-key", json!({"amount": 5})).await;
    assert_eq!(c2.status, 200, "{:?}", c2.body);
    assert_ne!(
        c2.body["entry"]["id"], c1.body["entry"]["id"],
        "credited again"
    );
    assert_eq!(usd(&c2.body["balance"]), Usd::from_dollars(12));

    let keys = format!("/admin/v1/accounts/{id}/keys");
    let k1 = post(keys.clone(), "key-key", json!({})).await;
    assert_eq!(k1.status, 201, "{:?}", k1.body);
    d.advance(25 * 3600).await;
    let k2 = post(keys.clone(), "key-key", json!({})).await;
    assert_eq!(k2.status, 201, "{:?}", k2.body);
    assert_ne!(k2.body["id"], k1.body["id"]);
    assert!(k2.body["key"].is_string(), "a new secret, shown once");
    let revoke = d
        .call(
            Method::DELETE,
            &format!("/admin/v1/keys/{}", k2.body["id"].as_str().unwrap()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(revoke.status, 200, "{:?}", revoke.body);
    assert!(revoke.body["revoked_at"].is_string(), "{:?}", revoke.body);
}
