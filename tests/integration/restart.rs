//! Restarts: a graceful stop and a kill -9 both keep rentals running and bill the
//! downtime; acknowledged writes survive kill -9; an orphan instance in a sandbox
//! cloud (a spotd label no rental owns) is terminated on start.

use std::time::Duration;

use crate::common::{cheapest, usd, Daemon};
use serde_json::json;
use spotd::clock::parse_rfc3339;
use spotd::http_client::HttpClient;
use spotd::money::{prorate, Usd};

async fn rent_running(d: &Daemon, key: &str) -> (String, Usd) {
    let offer = cheapest(d, key, "gpu=RTX%203090").await;
    let r = d
        .post("/v1/gpus/rentals", key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    d.wait_rental(key, &id, 20, |r| r["state"] == "running")
        .await;
    (id, usd(&r.body["price_per_hour"]))
}

async fn check_downtime_billed(
    d: &Daemon,
    key: &str,
    id: &str,
    price: Usd,
    down_from: std::time::SystemTime,
) {
    let r = d
        .wait_rental(key, id, 20, |r| r["state"] == "running")
        .await;
    let started = parse_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
    let down_ms = down_from
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // After a metering round, the cost covers at least up to the moment it went down
    // plus the time it was down (the GPU kept running).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let min_due = prorate(price, ((down_ms - started) / 1000).max(0) as u64 + 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let x = d.get(&format!("/v1/gpus/rentals/{id}"), key).await;
        assert_eq!(x.body["state"], "running", "{}", x.body);
        let cost = usd(&x.body["cost"]);
        if cost >= min_due {
            assert!(cost <= prorate(price, ((now_ms - started) / 1000 + 15) as u64));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "downtime not billed: cost {cost} < {min_due}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    d.assert_books_balance(key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_rentals_running_and_bills_downtime() {
    let mut d = Daemon::start("");
    let key = d.demo_key.clone();
    let (id, price) = rent_running(&d, &key).await;
    let status = d.stop();
    assert!(status.success(), "SIGTERM must exit 0: {status:?}");
    let down = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    d.restart();
    check_downtime_billed(&d, &key, &id, price, down).await;
    assert_eq!(
        d.delete(&format!("/v1/gpus/rentals/{id}"), &key)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_keeps_rentals_and_acknowledged_writes() {
    let mut d = Daemon::start("");
    let key = d.demo_key.clone();
    let admin = d.admin.clone();
    let (id, price) = rent_running(&d, &key).await;
    let (acct, k2) = d.account("durable", "1").await;
    let r = d
        .post(
            &format!("/admin/v1/accounts/{acct}/credits"),
            &admin,
            json!({"amount": 0.25}),
        )
        .await;
    assert_eq!(r.status, 200);
    d.kill9();
    let down = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    d.restart();
    let (bal, _, _) = d.assert_books_balance(&k2).await;
    assert_eq!(
        bal,
        Usd(1_250_000),
        "an acknowledged credit survived kill -9"
    );
    check_downtime_billed(&d, &key, &id, price, down).await;
    assert_eq!(
        d.delete(&format!("/v1/gpus/rentals/{id}"), &key)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_instance_is_terminated_on_start() {
    let mut d = Daemon::start("");
    let admin = d.admin.clone();
    let p = d.get("/admin/v1/providers", &admin).await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    let base = p.body["data"][0]["base_url"]
        .as_str()
        .expect("base_url")
        .to_string();
    let client = HttpClient::new(Duration::from_secs(10));
    let offers: serde_json::Value = client
        .get(&format!("{base}/offers"), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    let offer = offers["offers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["available"].as_u64().unwrap_or(0) > 0)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An instance with a spotd label that no rental owns (a crash between create and
    // record would leave exactly this), and one with a foreign label.
    let orphan: serde_json::Value = client
        .post_json(
            &format!("{base}/instances"),
            None,
            &json!({"offer_id": offer, "label": "rnt_orphan0000000001"}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let foreign: serde_json::Value = client
        .post_json(
            &format!("{base}/instances"),
            None,
            &json!({"offer_id": offer, "label": "someone-elses"}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    d.stop();
    d.restart();
    let p = d.get("/admin/v1/providers", &admin).await;
    let base = p.body["data"][0]["base_url"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let o: serde_json::Value = client
            .get(
                &format!("{base}/instances/{}", orphan["id"].as_str().unwrap()),
                None,
            )
            .await
            .unwrap()
            .json()
            .unwrap();
        let st = o["state"].as_str().unwrap_or("");
        if st == "terminating" || st == "terminated" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "orphan still {st}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let f: serde_json::Value = client
        .get(
            &format!("{base}/instances/{}", foreign["id"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(
        f["state"] == "provisioning" || f["state"] == "running",
        "an instance spotd did not label is left alone: {f}"
    );
}
