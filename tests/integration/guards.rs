//! Spend guards (SPEC section 6) against the in-process daemon on its manual clock:
//! the caps an operator sets with `PATCH /admin/v1/accounts/{id}`, a rental's
//! `max_cost`, and what they refuse and end, to the second and never past the cap.

use hyper::Method;
use serde_json::{json, Value};
use spotd::money::{prorate, Usd};

use crate::common::{cheapest, usd, Daemon, Resp, T0};

const COLD: &str = "meta-llama/Llama-3.1-8B-Instruct";
/// Every minimum session is 600 s (the `FAST` config).
const MIN_SESSION_S: u64 = 600;
/// Tests that poll every simulated second make many calls in little real time.
const UNLIMITED: &str = "[limits]\nrequests_per_second = 1000000\nburst = 1000000\n";

async fn patch(d: &Daemon, account: &str, body: Value) -> Resp {
    d.call(
        Method::PATCH,
        &format!("/admin/v1/accounts/{account}"),
        Some(d.admin.as_str()),
        Some(body),
    )
    .await
}

async fn account_view(d: &Daemon, account: &str) -> Value {
    let r = d
        .get(&format!("/admin/v1/accounts/{account}"), &d.admin)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Every instance of every sandbox cloud, whatever its state.
async fn cloud_instances(d: &Daemon) -> usize {
    let mut n = 0;
    let providers = d.get("/admin/v1/providers", &d.admin).await.body["data"]
        .as_array()
        .cloned()
        .unwrap();
    for p in providers {
        let base = d.cloud_base(p["name"].as_str().unwrap()).await;
        let r = d.raw(Method::GET, &format!("{base}/instances"), None).await;
        n += r.body["instances"].as_array().map_or(0, Vec::len);
    }
    n
}

fn assert_refused(r: &Resp, names: &str) -> String {
    assert_eq!(r.status, 402, "{:?}", r.body);
    assert_eq!(r.err_code(), "spend_limit_exceeded", "{:?}", r.body);
    let m = r.body["error"]["message"].as_str().unwrap().to_string();
    assert!(m.contains(names), "the message names {names}: {m}");
    m
}

async fn chat(d: &Daemon, key: &str, model: &str, max_tokens: u64) -> Resp {
    chat_about(d, key, model, max_tokens, "how much does a spot GPU cost").await
}

async fn chat_about(d: &Daemon, key: &str, model: &str, max_tokens: u64, content: &str) -> Resp {
    let body = json!({"model": model, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}]});
    d.post("/v1/chat/completions", key, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_refuse_rents_and_cold_starts_and_rent_nothing() {
    let d = Daemon::in_process("").await;
    let (acct, key) = d.account("capped", "100").await;
    let offer = cheapest(&d, &key, "gpu=H100").await;
    let price = usd(&offer["price_per_hour"]);
    let instances = cloud_instances(&d).await;

    // The hourly cap is a micro-dollar short of one rental.
    let cap = price - Usd(1);
    let r = patch(&d, &acct, json!({"max_usd_per_hour": cap.to_json()})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rent = json!({"offer_id": offer["id"]});
    let m = assert_refused(
        &d.post("/v1/gpus/rentals", &key, rent.clone()).await,
        "max_usd_per_hour",
    );
    assert!(
        m.contains(&format!("{cap} USD/h")) && m.contains("0 USD/h"),
        "{m}"
    );
    // A cold start obeys it too (any GPU is above a zero cap).
    let r = patch(&d, &acct, json!({"max_usd_per_hour": 0})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_refused(&chat(&d, &key, COLD, 16).await, "max_usd_per_hour");

    // The monthly cap: a micro-dollar short of the hold.
    let hold = prorate(price, MIN_SESSION_S);
    let r = patch(
        &d,
        &acct,
        json!({"max_usd_per_hour": null, "max_usd_per_month": (hold - Usd(1)).to_json()}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["max_usd_per_hour"].is_null());
    let m = assert_refused(
        &d.post("/v1/gpus/rentals", &key, rent.clone()).await,
        "max_usd_per_month",
    );
    assert!(m.contains(&format!("hold of {hold} USD")), "{m}");

    // Nothing was rented: no rental, no hold, no instance, only the opening credit.
    let list = d.get("/v1/gpus/rentals", &key).await;
    assert_eq!(
        list.body["data"].as_array().unwrap().len(),
        0,
        "{:?}",
        list.body
    );
    let (balance, held, _) = d.assert_books_balance(&key).await;
    assert_eq!((balance, held), (Usd::from_dollars(100), Usd::ZERO));
    assert_eq!(d.ledger(&key).await.len(), 1, "the opening credit only");
    d.advance(3).await;
    assert_eq!(cloud_instances(&d).await, instances, "no provider call");

    // Exactly the hold fits (at the price now: the sandbox's prices drift).
    let offer = d
        .get(
            &format!("/v1/gpus/offers/{}", offer["id"].as_str().unwrap()),
            &key,
        )
        .await
        .body;
    let hold = prorate(usd(&offer["price_per_hour"]), MIN_SESSION_S);
    let r = patch(&d, &acct, json!({"max_usd_per_month": hold.to_json()})).await;
    assert_eq!(r.status, 200);
    let r = d.post("/v1/gpus/rentals", &key, rent).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_ends_a_rental_exactly_at_the_limit() {
    let d = Daemon::in_process("").await;
    let (_, key) = d.account("bounded", "100").await;
    let offer = cheapest(&d, &key, "gpu=H100").await;
    let price = usd(&offer["price_per_hour"]);
    for bad in [json!(-1), json!(0), json!("lots"), json!(0.0000001)] {
        let r = d
            .post(
                "/v1/gpus/rentals",
                &key,
                json!({"offer_id": offer["id"], "max_cost": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "max_cost {bad}: {:?}", r.body);
    }
    assert_eq!(
        d.ledger(&key).await.len(),
        1,
        "refused bodies change nothing"
    );
    // About 7.5 s of this machine.
    let max = Usd(prorate(price, 15).0 / 2);
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            json!({"offer_id": offer["id"], "max_cost": max.to_json()}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(usd(&r.body["max_cost"]), max);
    let id = r.body["id"].as_str().unwrap().to_string();
    let end = d
        .wait_rental(&key, &id, 60, |r| r["state"] == "terminated")
        .await;
    assert_eq!(end["termination_reason"], "max_cost", "{end}");
    let cost = usd(&end["cost"]);
    let secs = (1..1_000).take_while(|s| prorate(price, *s) <= max).last();
    assert_eq!(Some(cost), secs.map(|s| prorate(price, s)), "{end}");
    assert!(cost <= max && cost > Usd::ZERO);
    // Billed to its end exactly: the end is the limit's second.
    let started = spotd::clock::parse_rfc3339(end["started_at"].as_str().unwrap()).unwrap();
    let ended = spotd::clock::parse_rfc3339(end["ended_at"].as_str().unwrap()).unwrap();
    assert_eq!(prorate(price, ((ended - started) / 1000) as u64), cost);
    let (balance, held, _) = d.assert_books_balance(&key).await;
    assert_eq!((balance, held), (Usd::from_dollars(100) - cost, Usd::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_budget_ends_a_running_rental_and_is_never_passed() {
    let d = Daemon::in_process(UNLIMITED).await;
    let (acct, key) = d.account("budget", "100").await;
    let offer = cheapest(&d, &key, "gpu=H100").await;
    let price = usd(&offer["price_per_hour"]);
    // The hold and about 20 s more.
    let cap = prorate(price, MIN_SESSION_S + 20);
    let r = patch(&d, &acct, json!({"max_usd_per_month": cap.to_json()})).await;
    assert_eq!(r.status, 200);
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let mut steps = 0;
    let end = loop {
        let spent = usd(&account_view(&d, &acct).await["spent_this_month"]);
        assert!(spent <= cap, "spent {spent} of {cap}");
        let x = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await.body;
        if x["state"] == "terminated" {
            break x;
        }
        steps += 1;
        assert!(steps < 2_000, "the budget never ended it: {x}");
        d.advance(1).await;
    };
    assert_eq!(end["termination_reason"], "budget_exceeded", "{end}");
    let cost = usd(&end["cost"]);
    let view = account_view(&d, &acct).await;
    assert_eq!(usd(&view["spent_this_month"]), cost);
    assert_eq!(usd(&view["max_usd_per_month"]), cap);
    assert!(
        cost <= cap && cost + prorate(price, 1) > cap,
        "{cost} of {cap}"
    );
    // What is left of the budget cannot hold another rental.
    assert_refused(
        &d.post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]}))
            .await,
        "max_usd_per_month",
    );
    d.assert_books_balance(&key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_requests_are_refused_past_the_budget() {
    let d = Daemon::in_process("").await;
    let (acct, key) = d.account("hosted", "10").await;
    // 0.003 USD: a request that may use 8000 output tokens (0.0048 USD) does not fit,
    // one of 16 does.
    let r = patch(&d, &acct, json!({"max_usd_per_month": 0.003})).await;
    assert_eq!(r.status, 200);
    let m = assert_refused(
        &chat(&d, &key, "gpt-4o-mini", 8_000).await,
        "max_usd_per_month",
    );
    assert!(m.contains("leaves 0.003 USD"), "{m}");
    assert_eq!(d.ledger(&key).await.len(), 1, "nothing charged");
    let r = chat(&d, &key, "gpt-4o-mini", 16).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    d.advance(1).await;
    let spent = usd(&account_view(&d, &acct).await["spent_this_month"]);
    assert!(spent > Usd::ZERO && spent <= Usd(3_000), "{spent}");
    // The cap lowered to what was spent: reached, so the next is refused.
    let r = patch(&d, &acct, json!({"max_usd_per_month": spent.to_json()})).await;
    assert_eq!(r.status, 200);
    let m = assert_refused(&chat(&d, &key, "gpt-4o-mini", 1).await, "is reached");
    assert!(m.contains(&format!("{spent} USD spent this month")), "{m}");
    assert_eq!(
        usd(&account_view(&d, &acct).await["spent_this_month"]),
        spent
    );
    // Cleared: served again.
    let r = patch(&d, &acct, json!({"max_usd_per_month": null})).await;
    assert!(r.body["max_usd_per_month"].is_null());
    assert_eq!(chat(&d, &key, "gpt-4o-mini", 16).await.status, 200);
    d.assert_books_balance(&key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_validates_and_a_bad_patch_changes_nothing() {
    let d = Daemon::in_process("").await;
    let (acct, key) = d.account("patched", "5").await;
    let r = patch(
        &d,
        &acct,
        json!({"max_usd_per_hour": 2.5, "max_usd_per_month": 100}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (
            usd(&r.body["max_usd_per_hour"]),
            usd(&r.body["max_usd_per_month"])
        ),
        (Usd(2_500_000), Usd::from_dollars(100))
    );
    assert_eq!(usd(&r.body["spent_this_month"]), Usd::ZERO);
    let bad = [
        (json!({"max_usd_per_hour": -1}), Some("max_usd_per_hour")),
        (
            json!({"max_usd_per_month": -0.5}),
            Some("max_usd_per_month"),
        ),
        (json!({"max_usd_per_hour": "cheap"}), None),
        (json!({"max_usd_per_hour": 1.0000001}), None),
        (json!({"max_usd_per_hour": true}), None),
        (json!({"max_usd_per_day": 1}), None),
        (json!({}), None),
        (json!([1]), None),
    ];
    for (body, param) in bad {
        let r = patch(&d, &acct, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{body}");
        if let Some(p) = param {
            assert_eq!(r.body["error"]["param"], p, "{body}");
        }
    }
    let r = d
        .call_h(
            Method::PATCH,
            &format!("/admin/v1/accounts/{acct}"),
            Some(d.admin.as_str()),
            &[],
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);
    let view = account_view(&d, &acct).await;
    assert_eq!(usd(&view["max_usd_per_hour"]), Usd(2_500_000), "unchanged");
    assert_eq!(usd(&view["max_usd_per_month"]), Usd::from_dollars(100));
    // One cap cleared, the other left as it was.
    let r = patch(&d, &acct, json!({"max_usd_per_hour": null})).await;
    assert!(r.body["max_usd_per_hour"].is_null());
    assert_eq!(usd(&r.body["max_usd_per_month"]), Usd::from_dollars(100));
    // Unknown account; a user key; the caller sees its own caps in /v1/credits.
    let r = patch(&d, "acct_nope", json!({"max_usd_per_hour": 1})).await;
    assert_eq!(r.status, 404);
    let r = d
        .call(
            Method::PATCH,
            &format!("/admin/v1/accounts/{acct}"),
            Some(&key),
            Some(json!({"max_usd_per_hour": 100})),
        )
        .await;
    assert_eq!(r.status, 401);
    let c = d.get("/v1/credits", &key).await.body;
    assert!(c["max_usd_per_hour"].is_null());
    assert_eq!(usd(&c["max_usd_per_month"]), Usd::from_dollars(100));
}

/// Six rents at once against an hourly cap that admits exactly two: the cap is checked
/// in the write transaction that places the hold, so they cannot pass it together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_rents_pass_an_hourly_cap_exactly_as_far_as_it_admits() {
    let d = Daemon::in_process("").await;
    let (acct, key) = d.account("racer", "1000").await;
    let offers = d
        .get("/v1/gpus/offers?sort=price&limit=1000", &key)
        .await
        .body["data"]
        .as_array()
        .cloned()
        .unwrap();
    let offer = offers
        .iter()
        .find(|o| o["available"].as_u64() >= Some(6))
        .expect("an offer with six machines")
        .clone();
    let price = usd(&offer["price_per_hour"]);
    let cap = Usd(price.0 * 2 + price.0 / 2);
    assert_eq!(
        patch(&d, &acct, json!({"max_usd_per_hour": cap.to_json()}))
            .await
            .status,
        200
    );
    let rents = (0..6).map(|_| d.post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]})));
    let answers = futures_util::future::join_all(rents).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    for r in answers.iter().filter(|r| r.status != 201) {
        assert_refused(r, "max_usd_per_hour");
    }
    let live = d.get("/v1/gpus/rentals", &key).await.body["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(live, 2);
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd(prorate(price, MIN_SESSION_S).0 * 2));
}

/// `spent_this_month` counts charges since 00:00 UTC on the 1st: at the turn of the
/// month it starts again, and a budget reached in December is open in January.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_this_month_starts_again_on_the_first() {
    let d = Daemon::in_process("").await;
    let (acct, key) = d.account("monthly", "10").await;
    // A long prompt (10 000 input tokens, 0.0015 USD): December's spend is worth many
    // small requests.
    let long = "gpu ".repeat(10_000);
    let r = chat_about(&d, &key, "gpt-4o-mini", 16, &long).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    d.advance(1).await;
    let december = usd(&account_view(&d, &acct).await["spent_this_month"]);
    assert!(december >= Usd(1_500), "{december}");
    let r = patch(&d, &acct, json!({"max_usd_per_month": december.to_json()})).await;
    assert_eq!(r.status, 200);
    assert_refused(&chat(&d, &key, "gpt-4o-mini", 16).await, "is reached");
    // To 2027-01-01T00:00:00Z, a second after the last millisecond of December.
    let january = T0 + 31 * 86_400_000;
    d.clock().advance(january - 1 - d.clock().now());
    d.clock().settle().await.unwrap();
    assert_eq!(
        usd(&account_view(&d, &acct).await["spent_this_month"]),
        december
    );
    d.advance(1).await;
    assert_eq!(
        usd(&account_view(&d, &acct).await["spent_this_month"]),
        Usd::ZERO
    );
    assert_eq!(chat(&d, &key, "gpt-4o-mini", 16).await.status, 200);
    d.advance(1).await;
    let charges: Vec<Usd> = d
        .ledger(&key)
        .await
        .iter()
        .filter(|e| e["kind"] == "charge")
        .map(|e| -usd(&e["amount"]))
        .collect();
    assert_eq!(charges.len(), 2);
    // Newest first: January's figure is January's charge alone.
    let view = account_view(&d, &acct).await;
    assert_eq!(usd(&view["spent_this_month"]), charges[0]);
    assert_eq!(charges[1], december);
}

/// Every refusal and every end a guard decides is an `account.spend_limit` webhook
/// event (SPEC section 8), recorded in the transaction that decided it and delivered
/// signed: a refused rent, a refused hosted request, a rental ended at its `max_cost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_and_guard_end_is_an_account_spend_limit_event() {
    use crate::receiver::{verify, Receiver};
    let d = Daemon::in_process("").await;
    let rec = Receiver::start(0, Some(d.clock().clone())).await;
    let r = d
        .post(
            "/admin/v1/webhooks",
            &d.admin,
            json!({"url": rec.url(), "events": ["account.spend_limit"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let (acct, key) = d.account("watched", "20").await;
    let offer = cheapest(&d, &key, "gpu=H100").await;
    let price = usd(&offer["price_per_hour"]);

    patch(&d, &acct, json!({"max_usd_per_hour": 0})).await;
    let rent = json!({"offer_id": offer["id"]});
    assert_refused(
        &d.post("/v1/gpus/rentals", &key, rent).await,
        "max_usd_per_hour",
    );
    patch(
        &d,
        &acct,
        json!({"max_usd_per_hour": null, "max_usd_per_month": 0}),
    )
    .await;
    assert_refused(&chat(&d, &key, "gpt-4o-mini", 16).await, "is reached");
    patch(&d, &acct, json!({"max_usd_per_month": null})).await;
    let max = prorate(price, 3);
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            json!({"offer_id": offer["id"], "max_cost": max.to_json()}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    d.wait_rental(&key, &id, 60, |r| r["state"] == "terminated")
        .await;
    for _ in 0..30 {
        if rec.got().len() >= 3 {
            break;
        }
        d.advance(1).await;
    }
    let got = rec.got();
    assert_eq!(got.len(), 3, "{got:?}");
    let mut limits: Vec<(String, String, Value)> = got
        .iter()
        .map(|g| {
            verify(&secret, g);
            let v = g.json();
            assert_eq!(v["type"], "account.spend_limit");
            assert_eq!(v["data"]["id"], acct.as_str());
            let l = &v["data"]["spend_limit"];
            (
                l["cap"].as_str().unwrap().to_string(),
                l["action"].as_str().unwrap().to_string(),
                l["rental_id"].clone(),
            )
        })
        .collect();
    // Events of one account or rental arrive in order; these are of two streams.
    limits.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        limits,
        vec![
            ("max_cost".into(), "ended".into(), json!(id)),
            ("max_usd_per_hour".into(), "refused".into(), Value::Null),
            ("max_usd_per_month".into(), "refused".into(), Value::Null),
        ]
    );
}
