//! Price history (SPEC section 7) against the real daemon on a manual clock: rows per
//! hour that agree with the market, day roll-ups, exact pagination, 400s, retention.

use std::collections::BTreeMap;

use serde_json::Value;
use spotd::money::Usd;

use crate::common::{usd, Daemon, T0};

/// Offers refresh every 10 minutes; the rental workers and metering just as rarely, so
/// hours of clock time take few rounds.
const SLOW: &str = "[billing]\nmetering_interval_seconds = 600\n[sandbox]\nrefresh_seconds = 600\nprice_drift = 0.05\n";
const HOUR: i64 = 3_600_000;

fn rfc(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn start_ms(r: &Value) -> i64 {
    let s = r["start"].as_str().unwrap();
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn prices(d: &Daemon, q: &str) -> Vec<Value> {
    let r = d.get(&format!("/v1/gpus/prices?{q}"), &d.demo_key).await;
    assert_eq!(r.status, 200, "{q}: {:?}", r.body);
    assert_eq!(r.body["object"], "list");
    r.body["data"].as_array().unwrap().clone()
}

/// The current offers of one (gpu, provider, flag) group: (min, max, count, available).
async fn current(
    d: &Daemon,
    gpu: &str,
    provider: Option<&str>,
    spot: bool,
) -> (Usd, Usd, u64, u64) {
    let mut q = format!(
        "gpu={}&interruptible={spot}&limit=1000",
        gpu.replace(' ', "%20")
    );
    if let Some(p) = provider {
        q.push_str(&format!("&provider={p}"));
    }
    let r = d.get(&format!("/v1/gpus/offers?{q}"), &d.demo_key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["next_cursor"].is_null());
    let offers: Vec<&Value> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["gpu"] == gpu)
        .collect();
    assert!(!offers.is_empty(), "no {gpu} offers");
    let prices: Vec<Usd> = offers
        .iter()
        .map(|o| usd(&o["price_per_gpu_hour"]))
        .collect();
    let available: u64 = offers
        .iter()
        .map(|o| o["available"].as_u64().unwrap())
        .sum();
    (
        *prices.iter().min().unwrap(),
        *prices.iter().max().unwrap(),
        offers.len() as u64,
        available,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_rows_agree_with_the_market_and_roll_up_by_day() {
    let d = Daemon::in_process_with(SLOW, Some((600, 600))).await;
    d.advance(3 * 3600 + 60).await;
    let since = rfc(T0);
    let gpu = "H100 SXM";
    let q = format!("gpu=h100%20sxm&provider=nimbus&interruptible=true&since={since}");
    let rows = prices(&d, &q).await;
    // One row per hour, 00:00 to 03:00, for exactly that model, provider and flag.
    let starts: Vec<i64> = rows.iter().map(start_ms).collect();
    assert_eq!(
        starts,
        vec![T0, T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR],
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(
            (
                r["gpu"].as_str(),
                r["provider"].as_str(),
                r["interruptible"].as_bool()
            ),
            (Some(gpu), Some("nimbus"), Some(true))
        );
        let (lo, mid, hi) = (
            usd(&r["min_price_per_gpu_hour"]),
            usd(&r["median_price_per_gpu_hour"]),
            usd(&r["max_price_per_gpu_hour"]),
        );
        assert!(lo <= mid && mid <= hi, "{r}");
    }
    // The last hour brackets the offers shown now (its last refresh is the market's).
    let last = rows.last().unwrap();
    let (lo, hi, n, avail) = current(&d, gpu, Some("nimbus"), true).await;
    assert!(
        usd(&last["min_price_per_gpu_hour"]) <= lo,
        "{last} vs min {lo}"
    );
    assert!(
        usd(&last["max_price_per_gpu_hour"]) >= hi,
        "{last} vs max {hi}"
    );
    assert_eq!(last["offers"].as_u64(), Some(n));
    assert_eq!(last["available"].as_u64(), Some(avail));

    // Every provider together: provider null, offers summed, prices bracket them all.
    let all = prices(
        &d,
        &format!("gpu=h100%20sxm&interruptible=true&since={since}"),
    )
    .await;
    assert_eq!(all.len(), 4);
    let last_all = all.last().unwrap();
    assert!(last_all["provider"].is_null());
    let (lo, hi, n, _) = current(&d, gpu, None, true).await;
    assert!(usd(&last_all["min_price_per_gpu_hour"]) <= lo);
    assert!(usd(&last_all["max_price_per_gpu_hour"]) >= hi);
    assert_eq!(last_all["offers"].as_u64(), Some(n));

    // A day: one row over the four hours, exact min and max, the largest hourly count.
    let day = prices(&d, &format!("{q}&interval=1d")).await;
    assert_eq!(day.len(), 1, "{day:?}");
    assert_eq!(start_ms(&day[0]), T0);
    let min = rows
        .iter()
        .map(|r| usd(&r["min_price_per_gpu_hour"]))
        .min()
        .unwrap();
    let max = rows
        .iter()
        .map(|r| usd(&r["max_price_per_gpu_hour"]))
        .max()
        .unwrap();
    let offers = rows
        .iter()
        .map(|r| r["offers"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(usd(&day[0]["min_price_per_gpu_hour"]), min);
    assert_eq!(usd(&day[0]["max_price_per_gpu_hour"]), max);
    assert_eq!(day[0]["offers"].as_u64(), Some(offers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_return_every_row_once_and_bad_parameters_are_400() {
    let d = Daemon::in_process_with(SLOW, Some((600, 600))).await;
    d.advance(2 * 3600).await;
    let since = rfc(T0);
    let everything = prices(&d, &format!("since={since}&limit=1000")).await;
    // Three clouds, several models and both flags, three hours.
    assert!(everything.len() > 40, "{}", everything.len());
    let mut walked: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = format!("/v1/gpus/prices?since={since}&limit=7");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let r = d.get(&q, &d.demo_key).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let data = r.body["data"].as_array().unwrap();
        assert!(data.len() <= 7);
        walked.extend(data.iter().cloned());
        pages += 1;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, everything.len().div_ceil(7));
    assert_eq!(walked, everything, "the same rows, each once, oldest first");
    let mut seen = BTreeMap::new();
    for r in &walked {
        let k = (
            start_ms(r),
            r["gpu"].to_string(),
            r["interruptible"].to_string(),
        );
        assert!(seen.insert(k, ()).is_none(), "duplicate {r}");
    }
    assert!(walked
        .windows(2)
        .all(|w| start_ms(&w[0]) <= start_ms(&w[1])));

    for (q, param) in [
        ("interval=5m", "interval"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("interruptible=maybe", "interruptible"),
        ("limit=0", "limit"),
        ("cursor=zz", "cursor"),
        ("since=1h&until=2h", "since"),
    ] {
        let r = d.get(&format!("/v1/gpus/prices?{q}"), &d.demo_key).await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{q}");
        assert_eq!(r.body["error"]["param"], param, "{q}: {:?}", r.body);
    }
    // The route is in the OpenAPI document.
    let doc = d
        .call(hyper::Method::GET, "/openapi.json", None, None)
        .await;
    assert!(doc.body["paths"]["/v1/gpus/prices"]["get"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_older_than_retention_days_are_swept() {
    let extra = format!("{SLOW}[history]\nretention_days = 1\n");
    let extra = extra.replace("refresh_seconds = 600", "refresh_seconds = 1800");
    let d = Daemon::in_process_with(&extra, Some((1800, 1800))).await;
    d.advance(3600).await;
    let since = rfc(T0 - HOUR);
    let q =
        format!("gpu=t4&provider=strato&interruptible=true&since={since}&interval=1h&limit=1000");
    let first = prices(&d, &q).await;
    assert_eq!(start_ms(&first[0]), T0, "the first hour is there");
    d.advance(25 * 3600).await;
    // Now T0 + 26 h: the hourly sweep keeps one day, so hours 00:00 and 01:00 are gone.
    let hourly = prices(&d, &q).await;
    let earliest = start_ms(&hourly[0]);
    assert!(
        earliest >= T0 + 2 * HOUR,
        "rows before the cutoff remain: {}",
        hourly[0]
    );
    let latest = start_ms(hourly.last().unwrap());
    assert!(
        latest >= T0 + 25 * HOUR,
        "recent rows stay: {}",
        hourly.last().unwrap()
    );
    assert_eq!(
        hourly.len() as i64,
        (latest - earliest) / HOUR + 1,
        "no gap after the cutoff"
    );
}
