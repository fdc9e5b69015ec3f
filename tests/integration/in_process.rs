//! The whole daemon in the test's process on a manual clock (`Daemon::in_process`):
//! time moves only when the test moves it, and every worker round that falls due runs
//! before `advance` returns.

use std::time::Instant;

use crate::common::{cheapest, usd, Daemon};
use serde_json::json;
use spotd::clock::parse_rfc3339;
use spotd::money::{prorate, Usd};

/// Coarse enough that an hour is a few hundred worker rounds.
const HOURLY: &str = r#"
[billing]
metering_interval_seconds = 10

[sandbox]
refresh_seconds = 600
price_drift = 0.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_hour_of_renting_bills_exactly() {
    let wall = Instant::now();
    let d = Daemon::in_process_with(HOURLY, Some((10, 60))).await;
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
        .wait_rental(&key, &id, 10, |r| r["state"] == "running")
        .await;
    let started = parse_rfc3339(running["started_at"].as_str().unwrap()).unwrap();

    // An hour of metering: 360 rounds, all charged by the time `advance` returns.
    let hour = Instant::now();
    d.advance(3600).await;
    let hour = hour.elapsed();
    let mid = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await.body;
    let ran = ((d.clock().now() - started) / 1000) as u64;
    assert!(ran >= 3600, "{ran}");
    // The last metering round is at most one interval behind the clock.
    let billed = usd(&mid["cost"]);
    assert!(
        billed <= prorate(price, ran) && billed >= prorate(price, ran - 10),
        "{mid}"
    );
    let charges = d
        .ledger(&key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "charge" && e["rental_id"] == id.as_str())
        .count();
    assert!(
        charges >= 350,
        "one charge per metering round, got {charges}"
    );

    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    let done = d
        .wait_rental(&key, &id, 10, |r| r["state"] == "terminated")
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
