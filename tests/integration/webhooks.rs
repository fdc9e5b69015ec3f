//! Webhooks (SPEC section 8) against the real daemon and a loopback receiver: events
//! arrive signed the Standard Webhooks way and verify with the secret shown once;
//! retries carry the same `webhook-id` on the backoff schedule of the manual clock, and
//! a rental's later event waits for its earlier one; low balance fires once per
//! crossing; `deployment.ready` goes out without a request asking; an event stored
//! before a kill -9 is delivered after the restart; bad input is a 400 that changes
//! nothing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{cheapest, Daemon};
use crate::receiver::{b64decode, verify, Got, Receiver};

/// Registers `url` for `events`; answers (id, secret).
async fn register(d: &Daemon, url: &str, events: &[&str]) -> (String, String) {
    let r = d
        .post(
            "/admin/v1/webhooks",
            &d.admin.clone(),
            json!({"url": url, "events": events, "description": "test receiver"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("wh_"), "{}", r.body);
    (id, r.body["secret"].as_str().unwrap().to_string())
}

async fn deliveries(d: &Daemon, hook: &str) -> Vec<Value> {
    let r = d
        .get(
            &format!("/admin/v1/webhooks/{hook}/deliveries"),
            &d.admin.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().unwrap().clone()
}

async fn rent(d: &Daemon, key: &str) -> String {
    let offer = cheapest(d, key, "gpu=RTX%203090").await;
    let r = d
        .post("/v1/gpus/rentals", key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

/// Moves the clock a second at a time until the receiver has `n` requests.
async fn wait_got(d: &Daemon, rec: &Receiver, n: usize, secs: u64) -> Vec<Got> {
    for _ in 0..secs {
        if rec.got().len() >= n {
            break;
        }
        d.advance(1).await;
    }
    let got = rec.got();
    assert!(got.len() >= n, "{} of {n} requests: {got:?}", got.len());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_then_ended_arrive_signed_and_are_listed() {
    let d = Daemon::in_process("").await;
    let rec = Receiver::start(0, Some(d.clock().clone())).await;
    let (hook, secret) = register(&d, &rec.url(), &["rental.running", "rental.ended"]).await;
    let key = d.demo_key.clone();
    let id = rent(&d, &key).await;
    d.wait_rental(&key, &id, 30, |r| r["state"] == "running")
        .await;
    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    let ended = d
        .wait_rental(&key, &id, 30, |r| r["state"] == "terminated")
        .await;
    let got = wait_got(&d, &rec, 2, 10).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for g in &got {
        verify(&secret, g);
        assert_eq!(g.json()["data"]["id"], id.as_str());
    }
    assert_eq!(got[0].kind(), "rental.running");
    assert_eq!(got[0].json()["data"]["state"], "running");
    assert_eq!(got[1].kind(), "rental.ended");
    let data = &got[1].json()["data"];
    assert_eq!(data["state"], "terminated");
    assert_eq!(data["termination_reason"], "user");
    assert_eq!(data["cost"], ended["cost"], "the final cost");
    assert_ne!(got[0].id, got[1].id);
    // The timestamp header is when it was sent, in Unix seconds of the daemon's clock.
    assert_eq!(got[1].timestamp, (got[1].at.unwrap() / 1000).to_string());

    let list = deliveries(&d, &hook).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["type"], "rental.ended", "newest first");
    assert_eq!(list[0]["event_id"], got[1].id.as_str());
    assert_eq!(list[1]["event_id"], got[0].id.as_str());
    for l in &list {
        assert_eq!(l["status"], "delivered", "{l}");
        assert_eq!(l["attempts"], 1);
        assert_eq!(l["last_status"], 200);
        assert!(l["next_attempt_at"].is_null());
    }
    // Pages by cursor.
    let admin = d.admin.clone();
    let p1 = d
        .get(
            &format!("/admin/v1/webhooks/{hook}/deliveries?limit=1"),
            &admin,
        )
        .await;
    assert_eq!(p1.body["data"].as_array().unwrap().len(), 1);
    let c = p1.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let p2 = d
        .get(
            &format!("/admin/v1/webhooks/{hook}/deliveries?limit=1&cursor={c}"),
            &admin,
        )
        .await;
    assert_eq!(p2.body["data"][0]["event_id"], got[0].id.as_str());
    assert!(p2.body["next_cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_id_follow_the_backoff_and_hold_back_the_next_event() {
    let d = Daemon::in_process("").await;
    let rec = Receiver::start(0, Some(d.clock().clone())).await;
    rec.answer(&[500, 500, 503]);
    let (hook, secret) = register(&d, &rec.url(), &["*"]).await;
    let key = d.demo_key.clone();
    let id = rent(&d, &key).await;
    d.wait_rental(&key, &id, 30, |r| r["state"] == "running")
        .await;
    // Ended while the running event is still being retried.
    assert_eq!(
        d.delete(&format!("/v1/gpus/rentals/{id}"), &key)
            .await
            .status,
        200
    );
    d.wait_rental(&key, &id, 30, |r| r["state"] == "terminated")
        .await;
    let got = wait_got(&d, &rec, 5, 30).await;
    assert_eq!(
        got.len(),
        5,
        "four attempts of one event, then the next: {got:?}"
    );
    for g in &got {
        verify(&secret, g);
    }
    let running = &got[..4];
    assert!(running.iter().all(|g| g.kind() == "rental.running"));
    assert!(
        running.iter().all(|g| g.id == running[0].id),
        "every retry carries the same webhook-id"
    );
    let at: Vec<i64> = running.iter().map(|g| g.at.unwrap()).collect();
    let gaps: Vec<i64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [1000, 2000, 4000], "backoff 1 s, 2 s, 4 s");
    // Re-signed at each attempt with its own timestamp.
    assert_ne!(running[0].timestamp, running[3].timestamp);
    assert_eq!(got[4].kind(), "rental.ended");
    assert!(
        got[4].at.unwrap() >= at[3],
        "after the running event got through"
    );

    let list = deliveries(&d, &hook).await;
    let running_row = list.iter().find(|l| l["type"] == "rental.running").unwrap();
    assert_eq!(running_row["attempts"], 4);
    assert_eq!(running_row["status"], "delivered");
    assert_eq!(running_row["last_status"], 200);
    // Counted for /metrics (process-wide: other tests in this binary count too).
    let m = d
        .call(hyper::Method::GET, "/metrics", Some(&d.admin.clone()), None)
        .await;
    let text = m.body.as_str().unwrap_or_default().to_string();
    let sample = |outcome: &str| -> u64 {
        let name = format!("spotd_webhook_attempts_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(sample("retry") >= 3 && sample("delivered") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_are_400s_and_the_secret_is_shown_once() {
    let d = Daemon::in_process("").await;
    let admin = d.admin.clone();
    for (body, param) in [
        (json!({"url": "ftp://127.0.0.1/x", "events": ["*"]}), "url"),
        (
            json!({"url": "127.0.0.1:9000/hook", "events": ["*"]}),
            "url",
        ),
        (json!({"url": "", "events": ["*"]}), "url"),
        (
            json!({"url": "http://127.0.0.1:9/h", "events": ["rental.exploded"]}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/h", "events": []}),
            "events",
        ),
    ] {
        let r = d.post("/admin/v1/webhooks", &admin, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
        assert_eq!(r.body["error"]["param"], param, "{:?}", r.body);
    }
    let r = d
        .post(
            "/admin/v1/webhooks",
            &admin,
            json!({"url": "http://x/", "evnts": ["*"]}),
        )
        .await;
    assert_eq!(r.status, 400, "unknown fields are refused: {:?}", r.body);
    let r = d.get("/admin/v1/webhooks", &admin).await;
    assert_eq!(r.body["data"], json!([]), "nothing was created");
    // Users cannot touch webhooks.
    let r = d.get("/admin/v1/webhooks", &d.demo_key.clone()).await;
    assert_eq!(r.status, 401);

    let (id, secret) = register(&d, "https://hooks.example.com/spotd?x=1", &["*"]).await;
    assert!(secret.starts_with("whsec_"));
    assert_eq!(b64decode(&secret[6..]).len(), 32);
    let list = d.get("/admin/v1/webhooks", &admin).await;
    assert_eq!(list.status, 200);
    let w = &list.body["data"][0];
    assert_eq!(w["id"], id.as_str());
    assert_eq!(w["url"], "https://hooks.example.com/spotd?x=1");
    assert_eq!(w["events"], json!(["*"]));
    assert!(w.get("secret").is_none(), "the secret is shown once: {w}");
    assert!(!list.body.to_string().contains(&secret[6..]));
    let del = d.delete(&format!("/admin/v1/webhooks/{id}"), &admin).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    assert_eq!(del.body["deleted"], true);
    let again = d.delete(&format!("/admin/v1/webhooks/{id}"), &admin).await;
    assert_eq!(again.status, 404);
    let r = d
        .get(&format!("/admin/v1/webhooks/{id}/deliveries"), &admin)
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_balance_fires_once_per_crossing() {
    let d = Daemon::in_process("[webhooks]\nlow_balance_usd = 5\n").await;
    let rec = Receiver::start(0, Some(d.clock().clone())).await;
    let (_, secret) = register(&d, &rec.url(), &["account.low_balance"]).await;
    let (acct, _) = d.account("thrifty", "6").await;
    let admin = d.admin.clone();
    for amount in ["-0.5", "-1", "-1", "3", "-2.5"] {
        // 5.5 (above), 4.5 (crossed), 3.5 (still below), 6.5 (above again), 4 (crossed)
        let amount: Value = serde_json::from_str(amount).unwrap();
        let r = d
            .post(
                &format!("/admin/v1/accounts/{acct}/credits"),
                &admin,
                json!({"amount": amount}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        d.advance(1).await;
    }
    d.advance(5).await;
    let got = rec.got();
    assert_eq!(got.len(), 2, "two crossings, two events: {got:?}");
    for g in &got {
        verify(&secret, g);
        assert_eq!(g.kind(), "account.low_balance");
        assert_eq!(g.json()["data"]["id"], acct.as_str());
        assert_eq!(g.json()["data"]["object"], "account");
    }
    assert_eq!(got[0].json()["data"]["available"].to_string(), "4.5");
    assert_eq!(got[1].json()["data"]["available"].to_string(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_ready_is_sent_without_a_request_asking() {
    const COLD: &str = "meta-llama/Llama-3.1-8B-Instruct";
    let d = Daemon::in_process("[sandbox]\nmodel_load_seconds = 2\n").await;
    let rec = Receiver::start(0, Some(d.clock().clone())).await;
    let (_, secret) = register(&d, &rec.url(), &["rental.running", "deployment.ready"]).await;
    let key = d.demo_key.clone();
    let r = d
        .call_h(
            hyper::Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(
                json!({"model": COLD, "messages": [{"role": "user", "content": "hi"}]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // No request from here on: only the clock moves.
    let got = wait_got(&d, &rec, 2, 60).await;
    for g in &got {
        verify(&secret, g);
    }
    assert_eq!(got[0].kind(), "rental.running");
    assert_eq!(got[1].kind(), "deployment.ready");
    let data = &got[1].json()["data"];
    assert_eq!(data["model"], COLD);
    assert_eq!(data["state"], "running");
    assert_eq!(data["id"], got[0].json()["data"]["id"]);
    d.advance(30).await;
    assert_eq!(rec.got().len(), 2, "ready is sent once");
}

/// An endpoint that accepts connections and never answers.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/never", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_slows_neither_the_api_nor_other_endpoints() {
    let d = Daemon::in_process("[webhooks]\ntimeout_seconds = 3\n").await;
    let (hole, task) = black_hole().await;
    let (stuck, _) = register(&d, &hole, &["*"]).await;
    let rec = Receiver::start(0, Some(d.clock().clone())).await;
    let (_, secret) = register(&d, &rec.url(), &["*"]).await;
    let key = d.demo_key.clone();
    let id = rent(&d, &key).await;
    // Time moves without waiting for the work it makes due: the rental runs, and both
    // endpoints get their attempt at once.
    for _ in 0..10 {
        d.clock().advance(1000);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while rec.got().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the healthy endpoint got nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile an attempt to the black hole is in flight: the API answers at once.
    let t = Instant::now();
    let r = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "running");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let healthy = rec.got();
    verify(&secret, &healthy[0]);
    assert_eq!(healthy[0].kind(), "rental.running");
    // The stuck endpoint's attempt ends at its timeout and is retried later.
    d.advance(1).await;
    let list = deliveries(&d, &stuck).await;
    assert_eq!(list[0]["type"], "rental.running");
    assert_eq!(list[0]["status"], "pending", "{:?}", list[0]);
    assert!(
        list[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("timed out"),
        "{:?}",
        list[0]
    );
    task.abort();
}

/// A real process: an event stored while the receiver is down, then kill -9, is
/// delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_before_kill9_is_delivered_after_the_restart() {
    let rec = Receiver::start(0, None).await;
    let port = rec.port;
    let mut d = Daemon::start("");
    let (hook, secret) = register(&d, &rec.url(), &["rental.running", "rental.ended"]).await;
    let key = d.demo_key.clone();
    let id = rent(&d, &key).await;
    d.wait_rental(&key, &id, 30, |r| r["state"] == "running")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rec.got().is_empty() {
        assert!(
            Instant::now() < deadline,
            "rental.running never arrived\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rec.got()[0].kind(), "rental.running");
    drop(rec);

    // The receiver is down: the event is stored and retried, not delivered.
    assert_eq!(
        d.delete(&format!("/v1/gpus/rentals/{id}"), &key)
            .await
            .status,
        200
    );
    d.wait_rental(&key, &id, 30, |r| r["state"] == "terminated")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let list = deliveries(&d, &hook).await;
        if let Some(e) = list
            .iter()
            .find(|l| l["type"] == "rental.ended" && l["attempts"].as_u64() >= Some(1))
        {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no failed attempt: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["status"], "pending", "{event}");
    assert!(event["last_error"].is_string(), "{event}");
    let event_id = event["event_id"].as_str().unwrap().to_string();

    d.kill9();
    let rec = Receiver::start(port, None).await;
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Some(g) = rec.got().into_iter().find(|g| g.id == event_id) {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "the stored event never arrived\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    verify(&secret, &got);
    assert_eq!(got.kind(), "rental.ended");
    assert_eq!(got.json()["data"]["id"], id.as_str());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = deliveries(&d, &hook).await;
        let row = list
            .iter()
            .find(|l| l["event_id"] == event_id.as_str())
            .unwrap();
        if row["status"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "{row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
