//! The whole daemon in the test's process on a manual clock (`Daemon::in_process`):
//! time moves only when the test moves it, and every worker round that falls due runs
//! before `advance` returns.

use std::time::Instant;

use crate::common::{cheapest, usd, Daemon};
use serde_json::json;
use spotd::clock::parse_rfc3339;
use spotd::money::{prorate, Usd};

/// Coarse enough that an hour is about two hundred worker rounds (sync and metering
/// every minute, a sweep every five).
const HOURLY: &str = r#"
[limits]
requests_per_second = 10000
burst = 10000

[billing]
metering_interval_seconds = 60

[sandbox]
refresh_seconds = 600
price_drift = 0.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_hour_of_renting_bills_exactly() {
    let wall = Instant::now();
    let d = Daemon::in_process_with(HOURLY, Some((60, 300))).await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=RTX%204090&interruptible=false").await;
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            json!({"offer_id": offer["id"], "name": "an-hour"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let price = usd(&r.body["price_per_hour"]);

    // Nothing happens while the clock stands still.
    assert_eq!(
        d.get(&format!("/v1/gpus/rentals/{id}"), &key).await.body["state"],
        "provisioning"
    );
    let running = d
        .wait_rental(&key, &id, 120, |r| r["state"] == "running")
        .await;
    let started = parse_rfc3339(running["started_at"].as_str().unwrap()).unwrap();

    // An hour of metering: 60 rounds, all charged by the time `advance` returns.
    let hour = Instant::now();
    d.advance(3600).await;
    let hour = hour.elapsed();
    let mid = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await.body;
    let ran = ((d.clock().now() - started) / 1000) as u64;
    assert!(ran >= 3600, "{ran}");
    // The last metering round is at most one interval behind the clock.
    let billed = usd(&mid["cost"]);
    assert!(
        billed <= prorate(price, ran) && billed >= prorate(price, ran - 60),
        "{mid}"
    );
    let charges = d
        .ledger(&key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "charge" && e["rental_id"] == id.as_str())
        .count();
    assert!(
        charges >= 59,
        "one charge per metering round, got {charges}"
    );

    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    let done = d
        .wait_rental(&key, &id, 120, |r| r["state"] == "terminated")
        .await;
    let ended = parse_rfc3339(done["ended_at"].as_str().unwrap()).unwrap();
    let secs = ((ended - started) / 1000) as u64;
    assert_eq!(secs, ran, "billing stops when the teardown is asked");
    assert_eq!(
        usd(&done["cost"]),
        prorate(price, secs),
        "cost = price x running seconds"
    );
    let (bal, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
    assert_eq!(bal, Usd::from_dollars(100) - prorate(price, secs));
    eprintln!(
        "the simulated hour took {:.2} s of wall time; the whole test ({} s of clock time) {:.2} s",
        hour.as_secs_f64(),
        (d.clock().now() - crate::common::T0) / 1000,
        wall.elapsed().as_secs_f64()
    );
}

/// Streams are charged in the background once they end; a graceful stop right after
/// must wait for those charges (they were detached tasks the store closed under).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_loses_no_stream_charge() {
    const STREAMS: usize = 24;
    let mut d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "tell me a story"}]})
    .to_string();
    let calls = (0..STREAMS).map(|_| {
        d.call_h(
            hyper::Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(body.clone().into_bytes()),
        )
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(
            r.body.as_str().unwrap_or("").contains("[DONE]"),
            "{:?}",
            r.body
        );
    }
    // Stop at once, then open the same data dir again: every stream is charged.
    d.stop_in_process().await;
    d.restart_in_process().await;
    let charged = d
        .ledger(&key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "charge" && e["request_id"].is_string())
        .count();
    assert_eq!(charged, STREAMS, "every answered stream is charged");
    d.assert_books_balance(&key).await;
}

/// The daemon's background writes (stream charges, activity, redeploys) all run on its
/// task tracker: a graceful stop waits for one still in flight, and only then closes the
/// store, so its write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_waits_for_a_background_write_in_flight() {
    let mut d = Daemon::in_process("").await;
    let (acct, _) = d.account("late", "1").await;
    let (tx_started, rx_started) = tokio::sync::oneshot::channel::<()>();
    let (tx_release, rx_release) = tokio::sync::oneshot::channel::<()>();
    let p = d.inproc.as_ref().unwrap();
    let (store, clock) = (p.store.clone(), p.clock.clone());
    let note = Some("a late background write".to_string());
    p.tasks.spawn(async move {
        let _ = tx_started.send(());
        let _ = rx_release.await;
        spotd::accounts::add_credit(&store, &clock, &acct, Usd::from_dollars(7), note)
            .await
            .expect("the store is still open");
    });
    rx_started.await.unwrap();
    let stop = d.begin_stop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !stop.is_finished(),
        "the stop did not wait for the background write"
    );
    tx_release.send(()).unwrap();
    stop.await.unwrap().expect("a clean stop");
    d.restart_in_process().await;
    let r = d
        .get("/admin/v1/accounts?limit=100", &d.admin.clone())
        .await;
    let late = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "late")
        .cloned()
        .unwrap();
    assert_eq!(usd(&late["balance"]), Usd::from_dollars(8), "{late}");
}
