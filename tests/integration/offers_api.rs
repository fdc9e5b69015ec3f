//! The offers API against the real daemon and its sandbox clouds: browse every page,
//! every filter and sort checked against the full list, one offer by id, bad
//! parameters, and cursor pagination that stays exact while the clouds refresh.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::common::{usd, Daemon};
use serde_json::Value;
use spotd::money::Usd;

/// Prices that do not move, so separate queries can be compared offer by offer; and a
/// rate limit that a walk of hundreds of one-offer pages stays under.
const STILL: &str =
    "[sandbox]\nprice_drift = 0.0\n[limits]\nrequests_per_second = 1000\nburst = 1000\n";

/// Every offer matching `query` in one page (the sandbox has fewer than 1000).
async fn all(d: &Daemon, key: &str, query: &str) -> Vec<Value> {
    let r = d
        .get(&format!("/v1/gpus/offers?limit=1000&{query}"), key)
        .await;
    assert_eq!(r.status, 200, "{query}: {:?}", r.body);
    assert_eq!(r.body["object"], "list");
    assert!(
        r.body["next_cursor"].is_null(),
        "{query}: one page of 1000 holds the whole sandbox"
    );
    r.body["data"].as_array().expect("data").clone()
}

fn ids(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|o| o["id"].as_str().expect("id").to_string())
        .collect()
}

fn id_set(v: &[Value]) -> BTreeSet<String> {
    let list = ids(v);
    let set: BTreeSet<String> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "duplicate offers in one answer");
    set
}

/// Walks every page of `query` with `limit`.
async fn walk(d: &Daemon, key: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let path = match &cursor {
            Some(c) => format!("/v1/gpus/offers?{query}&limit={limit}&cursor={c}"),
            None => format!("/v1/gpus/offers?{query}&limit={limit}"),
        };
        let r = d.get(&path, key).await;
        assert_eq!(r.status, 200, "page {page}: {:?}", r.body);
        let data = r.body["data"].as_array().expect("data");
        assert!(data.len() <= limit, "page {page} is over the limit");
        out.extend(data.iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(data.len(), limit, "only the last page may be short");
                cursor = Some(c.to_string());
            }
            None => break,
        }
        assert!(page < 1000, "the walk never ends");
    }
    out
}

/// The model words of an offer's `gpu`, lowercased ("H100 SXM" -> ["h100", "sxm"]).
fn gpu_words(o: &Value) -> Vec<String> {
    o["gpu"]
        .as_str()
        .expect("gpu")
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The primary sort key of each order, as (i128 so one type fits all), ascending.
fn sort_key(sort: &str, o: &Value) -> i128 {
    match sort {
        "price" => i128::from(usd(&o["price_per_hour"]).micros()),
        "-price" => -i128::from(usd(&o["price_per_hour"]).micros()),
        "price_per_gpu" => i128::from(usd(&o["price_per_gpu_hour"]).micros()),
        // Reliability is 0..1 with a few decimals: a fixed-point key keeps it exact
        // enough to order and avoids comparing floats for equality.
        "reliability" => -((o["reliability"].as_f64().expect("reliability") * 1e9).round() as i128),
        "-vram_gb" => -i128::from(o["vram_gb"].as_u64().expect("vram_gb")),
        other => panic!("unknown sort {other}"),
    }
}

fn assert_sorted(sort: &str, v: &[Value]) {
    for w in v.windows(2) {
        let (a, b) = (
            (sort_key(sort, &w[0]), w[0]["id"].as_str().unwrap()),
            (sort_key(sort, &w[1]), w[1]["id"].as_str().unwrap()),
        );
        assert!(a < b, "sort={sort}: {} before {}", w[0], w[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_every_page_without_duplicates_or_gaps() {
    let d = Daemon::in_process(STILL).await;
    let key = d.demo_key.clone();
    let everything = all(&d, &key, "").await;
    assert!(everything.len() >= 500, "only {} offers", everything.len());
    let full = id_set(&everything);
    let providers: BTreeSet<&str> = everything
        .iter()
        .map(|o| o["provider"].as_str().unwrap())
        .collect();
    assert!(providers.len() >= 3, "{providers:?}");
    for o in &everything {
        assert_eq!(o["object"], "gpu_offer");
        let id = o["id"].as_str().unwrap();
        assert_eq!(
            id.split_once(':').map(|(p, _)| p),
            o["provider"].as_str(),
            "id is provider:native_id"
        );
    }

    // Default page size is 50; a page size that does not divide the total, and 1.
    let first = d.get("/v1/gpus/offers", &key).await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 50);
    for limit in [37, 1000] {
        let walked = walk(&d, &key, "sort=price", limit).await;
        assert_eq!(walked.len(), full.len(), "limit {limit}");
        assert_eq!(id_set(&walked), full, "limit {limit}: the same offers");
        assert_sorted("price", &walked);
    }
    let h100 = walk(&d, &key, "gpu=h100&sort=-price", 1).await;
    assert_eq!(id_set(&h100), id_set(&all(&d, &key, "gpu=h100").await));
    assert_sorted("-price", &h100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_returns_exactly_the_matching_offers() {
    let d = Daemon::in_process(STILL).await;
    let key = d.demo_key.clone();
    let everything = all(&d, &key, "").await;
    let expect = |pred: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        id_set(
            &everything
                .iter()
                .filter(|o| pred(o))
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let check = |query: &'static str, want: BTreeSet<String>| {
        let d = &d;
        let key = key.clone();
        async move {
            let got = id_set(&all(d, &key, query).await);
            assert!(
                !want.is_empty(),
                "{query}: the fixture should match something"
            );
            assert_eq!(got, want, "{query}");
            got
        }
    };

    // gpu: case-insensitive, every H100 variant, nothing else.
    let h100 = check(
        "gpu=h100",
        expect(&|o| gpu_words(o).first().map(String::as_str) == Some("h100")),
    )
    .await;
    let variants: BTreeSet<&str> = everything
        .iter()
        .filter(|o| h100.contains(o["id"].as_str().unwrap()))
        .map(|o| o["gpu"].as_str().unwrap())
        .collect();
    assert!(variants.len() >= 2, "SXM and PCIe at least: {variants:?}");
    assert!(variants.iter().all(|g| g.starts_with("H100")));
    // "RTX 4090" with its space encoded either way.
    let rtx = expect(&|o| o["gpu"] == "RTX 4090");
    check("gpu=RTX%204090", rtx.clone()).await;
    check("gpu=rtx+4090", rtx).await;

    // max_price: inclusive, to the micro-dollar. Use an offer's exact price.
    let mut prices: Vec<Usd> = everything
        .iter()
        .map(|o| usd(&o["price_per_hour"]))
        .collect();
    prices.sort();
    let p = prices[prices.len() / 3];
    let q: &'static str = Box::leak(format!("max_price={p}").into_boxed_str());
    let got = check(q, expect(&|o| usd(&o["price_per_hour"]) <= p)).await;
    assert!(
        everything
            .iter()
            .any(|o| usd(&o["price_per_hour"]) == p && got.contains(o["id"].as_str().unwrap())),
        "an offer priced exactly max_price is included"
    );
    let below = p - Usd(1);
    let q: &'static str = Box::leak(format!("max_price={below}").into_boxed_str());
    check(q, expect(&|o| usd(&o["price_per_hour"]) < p)).await;

    check(
        "min_gpu_count=4",
        expect(&|o| o["gpu_count"].as_u64().unwrap() >= 4),
    )
    .await;
    check("gpu_count=2", expect(&|o| o["gpu_count"] == 2)).await;
    check(
        "min_vram_gb=48",
        expect(&|o| o["vram_gb"].as_u64().unwrap() >= 48),
    )
    .await;
    let provider = everything[0]["provider"].as_str().unwrap().to_string();
    let q: &'static str = Box::leak(format!("provider={provider}").into_boxed_str());
    check(q, expect(&|o| o["provider"] == provider.as_str())).await;
    let region = everything[0]["region"].as_str().unwrap().to_string();
    let q: &'static str = Box::leak(format!("region={region}").into_boxed_str());
    check(q, expect(&|o| o["region"] == region.as_str())).await;
    check(
        "interruptible=false",
        expect(&|o| o["interruptible"] == false),
    )
    .await;
    check(
        "interruptible=true",
        expect(&|o| o["interruptible"] == true),
    )
    .await;
    // Filters combine.
    check(
        "gpu=a100&min_gpu_count=2&interruptible=true",
        expect(&|o| {
            gpu_words(o).first().map(String::as_str) == Some("a100")
                && o["gpu_count"].as_u64().unwrap() >= 2
                && o["interruptible"] == true
        }),
    )
    .await;
    // Nothing matches: an empty list, not an error.
    let none = all(&d, &key, "max_price=0.000001").await;
    assert!(none.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sort_order_and_one_offer_by_id() {
    let d = Daemon::in_process(STILL).await;
    let key = d.demo_key.clone();
    let by_price = all(&d, &key, "").await;
    assert_sorted("price", &by_price);
    let full = id_set(&by_price);
    for sort in [
        "price",
        "-price",
        "price_per_gpu",
        "reliability",
        "-vram_gb",
    ] {
        let q: &'static str = Box::leak(format!("sort={sort}").into_boxed_str());
        let v = all(&d, &key, q).await;
        assert_eq!(id_set(&v), full, "sort={sort}: the same offers");
        assert_sorted(sort, &v);
        // The first key really varies, so the order is not just by id.
        assert_ne!(
            sort_key(sort, &v[0]),
            sort_key(sort, &v[v.len() - 1]),
            "{sort}"
        );
    }

    let o = &by_price[by_price.len() / 2];
    let id = o["id"].as_str().unwrap();
    let one = d.get(&format!("/v1/gpus/offers/{id}"), &key).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    for k in [
        "id",
        "object",
        "provider",
        "gpu",
        "gpu_count",
        "vram_gb",
        "vcpus",
        "ram_gb",
        "disk_gb",
        "region",
        "price_per_hour",
        "price_per_gpu_hour",
        "on_demand_price_per_hour",
        "interruptible",
        "reliability",
    ] {
        assert_eq!(one.body[k], o[k], "{k}");
    }
    assert!(one.body["available"].is_u64());
    assert!(one.body["updated_at"].is_string());
    for missing in ["nimbus:no-such-offer", "nope", "unknown-cloud:x1"] {
        let r = d.get(&format!("/v1/gpus/offers/{missing}"), &key).await;
        assert_eq!(r.status, 404, "{missing}: {:?}", r.body);
        assert!(r.body["error"]["message"].is_string());
    }

    // Bad parameters: 400 naming the parameter.
    for (q, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("sort=cheapest", "sort"),
        ("gpu_count=two", "gpu_count"),
        ("max_price=-1", "max_price"),
        ("max_price=0.0000001", "max_price"),
        ("interruptible=maybe", "interruptible"),
        ("colour=red", "colour"),
        ("cursor=zzzz", "cursor"),
    ] {
        let r = d.get(&format!("/v1/gpus/offers?{q}"), &key).await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{q}: {:?}", r.body);
    }
    // A cursor from one query is refused by another.
    let p = d.get("/v1/gpus/offers?limit=5&sort=price", &key).await;
    let c = p.body["next_cursor"].as_str().unwrap();
    let r = d
        .get(
            &format!("/v1/gpus/offers?limit=5&sort=-price&cursor={c}"),
            &key,
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
}

/// `last_refresh_at` of every provider, from the admin API.
async fn refreshes(d: &Daemon) -> HashMap<String, String> {
    let r = d.get("/admin/v1/providers", &d.admin.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["last_refresh_at"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until every provider has refreshed its offers since `before`.
async fn wait_for_refresh(d: &Daemon, before: &HashMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = refreshes(d).await;
        if now.iter().all(|(k, v)| before.get(k) != Some(v)) {
            return;
        }
        assert!(Instant::now() < deadline, "no refresh: {now:?}");
        d.pass(200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_stays_exact_while_offers_refresh() {
    // The fixture refreshes every 2 s with 2 % price drift.
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let full = id_set(&all(&d, &key, "").await);
    let mut walked: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let path = match &cursor {
            Some(c) => format!("/v1/gpus/offers?sort=price&limit=100&cursor={c}"),
            None => "/v1/gpus/offers?sort=price&limit=100".to_string(),
        };
        let r = d.get(&path, &key).await;
        assert_eq!(r.status, 200, "page {page}: {:?}", r.body);
        walked.extend(r.body["data"].as_array().unwrap().iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        // Every cloud refreshes between the first pages (not all: a cursor walks one
        // of the last 16 snapshots, and three clouds make three per round).
        if page < 2 {
            let before = refreshes(&d).await;
            wait_for_refresh(&d, &before).await;
        }
    }
    let first_page: Vec<Value> = walked.iter().take(100).cloned().collect();
    assert_eq!(walked.len(), full.len(), "no duplicates, no gaps");
    assert_eq!(id_set(&walked), full);
    // The walk reads the snapshot it started on: one consistent price order.
    assert_sorted("price", &walked);
    // And prices did move meanwhile, so the test walked across real refreshes.
    let now = all(&d, &key, "").await;
    let current: HashMap<&str, Usd> = now
        .iter()
        .map(|o| (o["id"].as_str().unwrap(), usd(&o["price_per_hour"])))
        .collect();
    let moved = first_page
        .iter()
        .filter(|o| current.get(o["id"].as_str().unwrap()) != Some(&usd(&o["price_per_hour"])))
        .count();
    assert!(moved > 0, "no price moved between pages");
}
