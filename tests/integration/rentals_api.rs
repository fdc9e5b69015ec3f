//! Renting end to end against the real daemon and its sandbox clouds: rent, running,
//! teardown, terminated, with exact billing; 402; criteria; another account's rental.

use crate::common::{cheapest, usd, Daemon};
use serde_json::json;
use spotd::clock::parse_rfc3339;
use spotd::money::{prorate, Usd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_run_teardown_bills_exactly_and_releases_the_hold() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let (bal0, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal0, Usd::from_dollars(100));

    let offer = cheapest(&d, &key, "gpu=RTX%204090").await;
    let offer_id = offer["id"].as_str().unwrap().to_string();
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            json!({"offer_id": offer_id, "name": "job-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["object"], "gpu_rental");
    assert_eq!(r.body["state"], "provisioning");
    assert_eq!(r.body["offer"]["id"], offer_id.as_str());
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("rnt_"));
    let price = usd(&r.body["price_per_hour"]);
    let hold = usd(&r.body["hold"]);
    assert_eq!(
        hold,
        prorate(price, 600),
        "hold = price x min_session_seconds"
    );

    // While provisioning: the hold is held, nothing is charged.
    let (_, held, avail) = d.assert_books_balance(&key).await;
    assert_eq!(held, hold);
    assert_eq!(avail, Usd::from_dollars(100) - hold);

    let running = d
        .wait_rental(&key, &id, 20, |r| r["state"] == "running")
        .await;
    assert!(running["started_at"].is_string());
    // Let it run across a few metering steps.
    d.pass(3500).await;
    let mid = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert!(
        usd(&mid.body["cost"]) > Usd::ZERO,
        "metering charged nothing: {}",
        mid.body
    );
    d.assert_books_balance(&key).await;

    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    let st = del.body["state"].as_str().unwrap();
    assert!(st == "terminating" || st == "terminated", "{st}");
    assert_eq!(del.body["termination_reason"], "user");

    let done = d
        .wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
        .await;
    let started = parse_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    let ended = parse_rfc3339(done["ended_at"].as_str().unwrap()).unwrap();
    let secs = ((ended - started) / 1000) as u64;
    assert!(secs >= 3, "ran {secs} s");
    let cost = usd(&done["cost"]);
    assert_eq!(
        cost,
        prorate(price, secs),
        "cost = price x whole running seconds"
    );
    assert_eq!(usd(&done["hold"]), Usd::ZERO);

    let (bal, held, avail) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO, "hold released");
    assert_eq!(bal, Usd::from_dollars(100) - cost);
    assert_eq!(avail, bal);
    // Every charge names the rental.
    for e in d.ledger(&key).await {
        if e["kind"] != "credit" {
            assert_eq!(e["rental_id"], id.as_str(), "{e}");
        }
    }

    // A second teardown of a terminated rental is a state conflict.
    let again = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    let list = d.get("/v1/gpus/rentals?state=terminated", &key).await;
    assert_eq!(list.body["object"], "list");
    assert_eq!(list.body["data"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_funds_is_402_and_nothing_is_rented() {
    let d = Daemon::in_process("").await;
    let (_, key) = d.account("poor", "0.01").await;
    let offer = cheapest(&d, &key, "gpu=H100&min_gpu_count=8").await;
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 402, "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "insufficient_credit");
    let list = d.get("/v1/gpus/rentals", &key).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 0);
    let (bal, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, Usd(10_000));
    assert_eq!(held, Usd::ZERO);
    assert_eq!(d.ledger(&key).await.len(), 1, "only the opening credit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_by_criteria_picks_the_cheapest_fit_and_others_get_404() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let best = cheapest(&d, &key, "gpu=a100").await;
    let max = usd(&best["price_per_hour"]) + Usd(1_000_000);
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            json!({"gpu": "a100", "max_price_per_hour": max.to_json()}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body["offer"]["gpu"].as_str().unwrap().contains("A100"));
    assert!(usd(&r.body["price_per_hour"]) <= max);
    let id = r.body["id"].as_str().unwrap().to_string();

    // Another account sees nothing of it.
    let (_, other) = d.account("other", "10").await;
    for (m, p) in [
        (hyper::Method::GET, format!("/v1/gpus/rentals/{id}")),
        (hyper::Method::DELETE, format!("/v1/gpus/rentals/{id}")),
        (
            hyper::Method::POST,
            format!("/v1/gpus/rentals/{id}/activity"),
        ),
    ] {
        let x = d.call(m, &p, Some(&other), None).await;
        assert_eq!(x.status, 404, "{p}: {:?}", x.body);
    }
    let l = d.get("/v1/gpus/rentals", &other).await;
    assert_eq!(l.body["data"].as_array().unwrap().len(), 0);

    // Nothing matches: a clear 409, nothing rented, nothing held.
    let none = d
        .post(
            "/v1/gpus/rentals",
            &other,
            json!({"gpu": "H100", "max_price_per_hour": 0.01}),
        )
        .await;
    assert_eq!(none.status, 409, "{:?}", none.body);
    assert_eq!(none.err_code(), "no_capacity");
    let (_, held, _) = d.assert_books_balance(&other).await;
    assert_eq!(held, Usd::ZERO);

    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rentals_list_pages_newest_first_with_a_cursor() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = d.post("/v1/gpus/rentals", &key, json!({"gpu": "T4"})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
        // The list is ordered by creation time (then id): one second apart.
        d.pass(1000).await;
    }
    let p1 = d.get("/v1/gpus/rentals?limit=2", &key).await;
    assert_eq!(p1.status, 200, "{:?}", p1.body);
    let c = p1.body["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let p2 = d
        .get(&format!("/v1/gpus/rentals?limit=2&cursor={c}"), &key)
        .await;
    assert!(p2.body["next_cursor"].is_null());
    let seen: Vec<String> = p1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2.body["data"].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let bad = d.get("/v1/gpus/rentals?cursor=nope", &key).await;
    assert_eq!(bad.status, 400);
    for id in ids {
        d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    }
}
