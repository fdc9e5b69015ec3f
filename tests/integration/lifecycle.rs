//! The rental state machine against the real daemon and its sandbox clouds: spot
//! preemption, provisioning timeout, idle and max-duration limits, teardown while
//! provisioning, a provider whose offers fail (stale), and the active-rental limit.

use std::time::{Duration, Instant};

use crate::common::{cheapest, usd, Daemon};
use hyper::Method;
use serde_json::{json, Value};
use spotd::clock::parse_rfc3339;
use spotd::money::{prorate, Usd};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Rents `body` (an offer id or criteria) and answers the rental JSON.
async fn rent(d: &Daemon, key: &str, body: Value) -> Value {
    let r = d.post("/v1/gpus/rentals", key, body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body
}

/// A rental that ran and ended is billed its whole running seconds at its locked
/// price, exactly, and holds nothing any more.
fn assert_billed_exactly(r: &Value) {
    let started = parse_rfc3339(s(r, "started_at")).expect("started_at");
    let ended = parse_rfc3339(s(r, "ended_at")).expect("ended_at");
    assert!(ended >= started, "{r}");
    let secs = ((ended - started) / 1000) as u64;
    assert_eq!(
        usd(&r["cost"]),
        prorate(usd(&r["price_per_hour"]), secs),
        "cost = price x {secs} whole seconds: {r}"
    );
    assert_eq!(usd(&r["hold"]), Usd::ZERO, "hold released: {r}");
}

/// Polls the sandbox cloud until the rental's instance is terminating or gone.
async fn wait_instance_stopped(d: &Daemon, provider: &str, rental_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = d
            .cloud_instance(provider, rental_id)
            .await
            .expect("the cloud has an instance labelled with the rental id");
        let st = s(&i, "state");
        if st == "terminating" || st == "terminated" {
            return i;
        }
        assert!(Instant::now() < deadline, "instance still {st}: {i}");
        d.pass(200).await;
    }
}

fn ended(r: &Value) -> bool {
    let st = r["state"].as_str().unwrap_or("");
    st == "terminating" || st == "terminated"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_interrupts_and_bills_up_to_the_moment_it_happened() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "interruptible=true&gpu=RTX%204090").await;
    assert_eq!(offer["interruptible"], true);
    let r = rent(&d, &key, json!({"offer_id": offer["id"]})).await;
    let id = s(&r, "id").to_string();
    let provider = s(&r, "provider").to_string();
    d.wait_rental(&key, &id, 20, |r| r["state"] == "running")
        .await;
    // Run across a few metering steps, so some of it is charged before the preemption.
    d.pass(2500).await;

    let inst = d.cloud_instance(&provider, &id).await.expect("instance");
    let base = d.cloud_base(&provider).await;
    let p = d
        .raw(
            Method::POST,
            &format!("{base}/_control/preempt/{}", s(&inst, "id")),
            None,
        )
        .await;
    assert_eq!(p.status, 200, "{:?}", p.body);

    let done = d
        .wait_rental(&key, &id, 20, |r| r["state"] == "interrupted")
        .await;
    assert_eq!(done["termination_reason"], "preempted", "{done}");
    assert!(done["endpoint"].is_null());
    // Billed up to the preemption the cloud reports, not up to when spotd noticed.
    let inst = d.cloud_instance(&provider, &id).await.expect("instance");
    // spotd also destroys what is left of a preempted machine: interrupted, then
    // terminated, still ended at the preemption.
    assert!(
        inst["state"] == "interrupted" || inst["state"] == "terminated",
        "{inst}"
    );
    assert_eq!(
        done["ended_at"], inst["ended_at"],
        "ends when the GPU was taken"
    );
    assert_billed_exactly(&done);
    let cost = usd(&done["cost"]);
    assert!(cost > Usd::ZERO);

    let (bal, held, avail) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
    assert_eq!(bal, Usd::from_dollars(100) - cost);
    assert_eq!(avail, bal);
    // The interrupted rental cannot be torn down again; it stays interrupted.
    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 409, "{:?}", del.body);
    d.pass(1500).await;
    let again = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(again.body["state"], "interrupted");
    assert_eq!(
        again.body["cost"], done["cost"],
        "nothing billed after the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_timeout_fails_costs_nothing_and_terminates_the_instance() {
    let d = Daemon::in_process(
        "[sandbox]\nprovision_seconds = 30\n[deployments]\nprovision_timeout_seconds = 2\n",
    )
    .await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let r = rent(&d, &key, json!({"offer_id": offer["id"]})).await;
    assert_eq!(r["state"], "provisioning");
    let id = s(&r, "id").to_string();
    let provider = s(&r, "provider").to_string();
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, usd(&r["hold"]));

    let failed = d
        .wait_rental(&key, &id, 20, |r| r["state"] == "failed")
        .await;
    assert_eq!(failed["termination_reason"], "provision_failed", "{failed}");
    assert_eq!(usd(&failed["cost"]), Usd::ZERO);
    assert_eq!(usd(&failed["hold"]), Usd::ZERO);
    assert!(failed["started_at"].is_null());
    let created = parse_rfc3339(s(&failed, "created_at")).unwrap();
    let ended = parse_rfc3339(s(&failed, "ended_at")).unwrap();
    assert!(
        ended - created >= 2000,
        "failed before the timeout: {failed}"
    );

    let (bal, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO, "hold released");
    assert_eq!(bal, Usd::from_dollars(100), "nothing charged");
    assert!(d
        .ledger(&key)
        .await
        .iter()
        .all(|e| e["kind"] != "charge" || usd(&e["amount"]) == Usd::ZERO));
    wait_instance_stopped(&d, &provider, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_terminates_unless_activity_keeps_it_alive() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=RTX%203090").await;
    let idle = rent(
        &d,
        &key,
        json!({"offer_id": offer["id"], "idle_timeout_seconds": 2}),
    )
    .await;
    // The busy one gets 4 s, so a loaded machine stalling one activity call for a
    // second or two cannot make it idle; the loop below still runs well past that.
    let busy = rent(
        &d,
        &key,
        json!({"gpu": "RTX 3090", "idle_timeout_seconds": 4}),
    )
    .await;
    assert_eq!(idle["idle_timeout_seconds"], 2);
    let (idle_id, busy_id) = (s(&idle, "id").to_string(), s(&busy, "id").to_string());
    d.wait_rental(&key, &busy_id, 20, |r| r["state"] == "running")
        .await;

    // Keep the busy one used, once a second of clock time, for well past its idle
    // timeout.
    for _ in 0..7 {
        let a = d
            .call(
                Method::POST,
                &format!("/v1/gpus/rentals/{busy_id}/activity"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["state"], "running", "{}", a.body);
        d.pass(1000).await;
    }
    let b = d.get(&format!("/v1/gpus/rentals/{busy_id}"), &key).await;
    assert_eq!(b.body["state"], "running", "{}", b.body);
    let started = parse_rfc3339(s(&b.body, "started_at")).unwrap();
    let last = parse_rfc3339(s(&b.body, "last_activity_at")).unwrap();
    assert!(
        last - started > 5000,
        "activity moved the idle clock: {}",
        b.body
    );

    // The idle one was reaped with reason idle, about 2 s after it started.
    let r = d.wait_rental(&key, &idle_id, 20, ended).await;
    assert_eq!(r["termination_reason"], "idle", "{r}");
    let r = d
        .wait_rental(&key, &idle_id, 20, |r| r["state"] == "terminated")
        .await;
    let ran =
        parse_rfc3339(s(&r, "ended_at")).unwrap() - parse_rfc3339(s(&r, "started_at")).unwrap();
    assert!(ran >= 2000, "reaped before its idle timeout: {r}");
    assert_billed_exactly(&r);

    // Activity on an ended rental is a state conflict.
    let a = d
        .call(
            Method::POST,
            &format!("/v1/gpus/rentals/{idle_id}/activity"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(a.status, 409, "{:?}", a.body);

    let del = d.delete(&format!("/v1/gpus/rentals/{busy_id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    d.wait_rental(&key, &busy_id, 20, |r| r["state"] == "terminated")
        .await;
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_terminates() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=A10").await;
    let r = rent(
        &d,
        &key,
        json!({"offer_id": offer["id"], "max_duration_seconds": 2}),
    )
    .await;
    assert_eq!(r["max_duration_seconds"], 2);
    let id = s(&r, "id").to_string();
    let provider = s(&r, "provider").to_string();
    let e = d.wait_rental(&key, &id, 25, ended).await;
    assert_eq!(e["termination_reason"], "max_duration", "{e}");
    let done = d
        .wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
        .await;
    let ran = parse_rfc3339(s(&done, "ended_at")).unwrap()
        - parse_rfc3339(s(&done, "started_at")).unwrap();
    assert!(ran >= 2000, "ended before max_duration: {done}");
    assert!(ran < 10_000, "ran far past max_duration: {done}");
    assert_billed_exactly(&done);
    wait_instance_stopped(&d, &provider, &id).await;
    let (bal, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
    assert_eq!(bal, Usd::from_dollars(100) - usd(&done["cost"]));
}

/// How many offers of `provider` the offers API lists.
async fn listed(d: &Daemon, key: &str, provider: &str) -> usize {
    let r = d
        .get(
            &format!("/v1/gpus/offers?provider={provider}&limit=1000"),
            key,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_stale_and_keeps_its_offers() {
    // Only the "stale" half: in sandbox mode the daemon fixes stale_after_seconds at
    // 300, so the drop to "failing" is covered by the registry's unit tests instead.
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let any = cheapest(&d, &key, "").await;
    let provider = s(&any, "provider").to_string();
    let before = d.provider_status(&provider).await;
    assert_eq!(before["status"], "ok", "{before}");
    let n = listed(&d, &key, &provider).await;
    assert!(n > 0);

    let base = d.cloud_base(&provider).await;
    let f = d
        .raw(
            Method::POST,
            &format!("{base}/_control/fail"),
            Some(json!({"offers": true})),
        )
        .await;
    assert_eq!(f.status, 200, "{:?}", f.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stale = loop {
        let p = d.provider_status(&provider).await;
        if p["status"] == "stale" {
            break p;
        }
        assert!(Instant::now() < deadline, "never stale: {p}");
        d.pass(200).await;
    };
    assert_eq!(stale["stale"], true, "{stale}");
    assert!(
        stale["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{stale}"
    );
    assert!(
        stale["last_refresh_at"].is_string(),
        "the last success: {stale}"
    );
    assert_eq!(stale["offers"], n, "{stale}");
    // Its last offers are still listed; the other providers are unaffected.
    assert_eq!(listed(&d, &key, &provider).await, n);
    for p in d.get("/admin/v1/providers", &d.admin.clone()).await.body["data"]
        .as_array()
        .unwrap()
    {
        if p["name"] != provider.as_str() {
            assert_eq!(p["status"], "ok", "{p}");
        }
    }

    // It recovers once the cloud answers again.
    d.raw(
        Method::POST,
        &format!("{base}/_control/fail"),
        Some(json!({"offers": false})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = d.provider_status(&provider).await;
        if p["status"] == "ok" {
            assert!(p["last_error"].is_null(), "{p}");
            assert_eq!(p["stale"], false);
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {p}");
        d.pass(200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_provisioning_rental_costs_nothing() {
    let d = Daemon::in_process("[sandbox]\nprovision_seconds = 30\n").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=L4").await;
    let r = rent(&d, &key, json!({"offer_id": offer["id"]})).await;
    assert_eq!(r["state"], "provisioning");
    let id = s(&r, "id").to_string();
    let provider = s(&r, "provider").to_string();
    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    assert!(ended(&del.body), "{}", del.body);
    assert_eq!(del.body["termination_reason"], "user");
    assert_eq!(usd(&del.body["cost"]), Usd::ZERO);
    assert_eq!(usd(&del.body["hold"]), Usd::ZERO, "hold released at once");
    let done = d
        .wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
        .await;
    assert_eq!(usd(&done["cost"]), Usd::ZERO);
    assert!(done["started_at"].is_null(), "it never ran: {done}");
    wait_instance_stopped(&d, &provider, &id).await;
    let (bal, held, _) = d.assert_books_balance(&key).await;
    assert_eq!((bal, held), (Usd::from_dollars(100), Usd::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_rental_limit_answers_409_and_holds_nothing() {
    let d = Daemon::in_process("[limits]\nmax_active_rentals_per_account = 1\n").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let first = rent(&d, &key, json!({"offer_id": offer["id"]})).await;
    let (_, held1, _) = d.assert_books_balance(&key).await;
    assert_eq!(held1, usd(&first["hold"]));
    let entries = d.ledger(&key).await.len();

    let second = d.post("/v1/gpus/rentals", &key, json!({"gpu": "T4"})).await;
    assert_eq!(second.status, 409, "{:?}", second.body);
    assert_eq!(second.err_code(), "too_many_rentals");
    let (_, held2, _) = d.assert_books_balance(&key).await;
    assert_eq!(held2, held1, "the refused rent holds nothing");
    assert_eq!(d.ledger(&key).await.len(), entries, "no ledger entry");
    let list = d.get("/v1/gpus/rentals", &key).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);

    // Another account has its own limit.
    let (_, other) = d.account("other", "50").await;
    rent(&d, &other, json!({"gpu": "T4"})).await;

    // Once the first has ended, renting works again.
    let id = s(&first, "id").to_string();
    d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    d.wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
        .await;
    rent(&d, &key, json!({"gpu": "T4"})).await;
}

/// `available` of one offer, as the offers API shows it.
async fn available(d: &Daemon, key: &str, offer_id: &str) -> u64 {
    let r = d.get(&format!("/v1/gpus/offers/{offer_id}"), key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["available"].as_u64().expect("available")
}

/// Polls until the offer shows `want` machines left.
async fn wait_available(d: &Daemon, key: &str, offer_id: &str, want: u64, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = available(d, key, offer_id).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{why}: available {n}, want {want}"
        );
        d.pass(200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_drops_on_rent_and_comes_back_on_release() {
    // Scheduled refreshes a minute apart: what the market shows in between comes from
    // the refreshes renting and releasing ask for.
    let d = Daemon::in_process("[sandbox]\nrefresh_seconds = 60\n").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=A10").await;
    let id = s(&offer, "id").to_string();
    let n = available(&d, &key, &id).await;
    assert!(n >= 1);
    let r = rent(&d, &key, json!({"offer_id": id})).await;
    let rid = s(&r, "id").to_string();
    wait_available(&d, &key, &id, n - 1, "a rented machine is taken").await;
    let del = d.delete(&format!("/v1/gpus/rentals/{rid}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    d.wait_rental(&key, &rid, 20, |r| r["state"] == "terminated")
        .await;
    wait_available(&d, &key, &id, n, "a released machine comes back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_by_criteria_moves_on_when_the_cheapest_has_no_capacity() {
    // The market refreshes a minute apart, so it still shows machines that someone
    // else just took at the cloud.
    let d = Daemon::in_process("[sandbox]\nrefresh_seconds = 60\n").await;
    let key = d.demo_key.clone();
    let best = cheapest(&d, &key, "gpu=A6000").await;
    let best_id = s(&best, "id").to_string();
    let (provider, native) = best_id.split_once(':').unwrap();
    let base = d.cloud_base(provider).await;
    // Another customer of the cloud takes every machine of the cheapest offer.
    for _ in 0..best["available"].as_u64().unwrap() {
        let r = d
            .raw(
                Method::POST,
                &format!("{base}/instances"),
                Some(json!({"offer_id": native, "label": "someone-else"})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    assert_eq!(available(&d, &key, &best_id).await, best["available"]);

    // By offer id: 409 no_capacity, nothing held.
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": best_id}))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.err_code(), "no_capacity");
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);

    // By criteria: the next candidate is rented, with its own price and hold.
    let r = rent(&d, &key, json!({"gpu": "A6000"})).await;
    assert_ne!(r["offer"]["id"], best_id.as_str(), "{r}");
    assert!(s(&r["offer"], "gpu").contains("A6000"), "{r}");
    let price = usd(&r["price_per_hour"]);
    assert_eq!(price, usd(&r["offer"]["price_per_hour"]));
    assert!(price >= usd(&best["price_per_hour"]));
    assert_eq!(usd(&r["hold"]), prorate(price, 600));
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, usd(&r["hold"]), "only the rented offer's hold");
    // The other customer's instances are none of spotd's business: left running.
    d.pass(1500).await;
    let inst = d.raw(Method::GET, &format!("{base}/instances"), None).await;
    let theirs: Vec<&Value> = inst.body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["label"] == "someone-else")
        .collect();
    assert!(!theirs.is_empty());
    assert!(theirs
        .iter()
        .all(|i| i["state"] != "terminating" && i["state"] != "terminated"));
}
