//! Proxy overhead, open loop: the same non-streaming `gpt-4o-mini` chat completion
//! sent at a steady rate (default 2,000 req/s) through spotd (`/v1/chat/completions`:
//! auth, rate limit, catalogue, admission, upstream call, per-token billing) and
//! straight to the sandbox hosted upstream spotd proxies to, in alternating phases of
//! the same run. Requests leave on schedule whether or not earlier ones have answered
//! (no coordinated omission); each is timed from the moment it is sent. Prints p50,
//! p99 and p99.9 of both paths and what spotd adds.
//!
//! The daemon runs in-process in sandbox mode (its hosted upstream is an in-process
//! loopback server), so both paths share the same machine, runtime and upstream; the
//! difference is spotd's work plus one extra loopback hop.
//!
//! `cargo bench --bench proxy` (optionally `-- RATE SECONDS_PER_PHASE PHASES`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};
use spotd::config::Config;
use spotd::http_client::HttpClient;
use tokio_util::sync::CancellationToken;

const DEFAULT_RATE: usize = 2000;
const DEFAULT_PHASE_SECONDS: usize = 3;
const DEFAULT_PHASES: usize = 3;
const WARMUP_PER_TARGET: usize = 200;

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = nums.first().copied().unwrap_or(DEFAULT_RATE).max(1);
    let phase = nums.get(1).copied().unwrap_or(DEFAULT_PHASE_SECONDS).max(1);
    let phases = nums.get(2).copied().unwrap_or(DEFAULT_PHASES).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(bench(rate, phase, phases)) {
        eprintln!("proxy bench failed: {e}");
        std::process::exit(1);
    }
}

async fn wait_for_file(path: &Path, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return Ok(s.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not appear", path.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bench(rate: usize, phase: usize, phases: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        force_sandbox: true,
        ..Config::default()
    };
    // The rate limiter must not be what is measured.
    cfg.limits.requests_per_second = 1_000_000;
    cfg.limits.burst = 1_000_000;
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(spotd::daemon::run(cfg, shutdown.clone()));

    let addr = wait_for_file(&dir.path().join("spotd.addr"), Duration::from_secs(60)).await?;
    let admin = wait_for_file(&dir.path().join("admin.token"), Duration::from_secs(5)).await?;
    let key = wait_for_file(&dir.path().join("demo.key"), Duration::from_secs(5)).await?;
    let spotd_url = format!("http://{addr}/v1/chat/completions");

    let client = HttpClient::new(Duration::from_secs(30));
    let providers = client
        .get(&format!("http://{addr}/admin/v1/providers"), Some(&admin))
        .await
        .map_err(|e| e.to_string())?
        .json::<Value>()?;
    // A cloud's base_url is http://SANDBOX_ADDR/<cloud>; the hosted upstream lives on
    // the same server.
    let cloud = providers["data"][0]["base_url"]
        .as_str()
        .ok_or_else(|| format!("no provider base_url in {providers}"))?;
    let sandbox = cloud
        .rsplit_once('/')
        .map(|(base, _)| base)
        .ok_or_else(|| format!("unexpected base_url {cloud}"))?;
    let direct_url = format!("{sandbox}/hosted/v1/chat/completions");

    let body = serde_json::to_vec(&json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Measure the proxy overhead of spotd please"}],
        "max_tokens": 16,
    }))
    .map_err(|e| e.to_string())?;
    let targets = Arc::new([(spotd_url, Some(key)), (direct_url, None)]);

    for t in targets.iter() {
        for _ in 0..WARMUP_PER_TARGET {
            one(&client, &t.0, t.1.as_deref(), &body).await?;
        }
    }

    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut behind = Duration::ZERO;
    for p in 0..phases * 2 {
        // direct, spotd, direct, spotd, ...: each path sees the same warm-up and drift.
        let t = if p % 2 == 0 { 1 } else { 0 };
        let (l, late) = open_loop(&client, &targets[t], &body, rate, phase).await?;
        behind = behind.max(late);
        lat[t].extend(l);
    }

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), daemon).await;

    let [mut via, mut direct] = lat;
    via.sort();
    direct.sort();
    println!(
        "proxy overhead, open loop: {rate} req/s, {phases} phases of {phase} s per path, alternating; \
         {} + {} requests; the sender was at most {:.2} ms behind schedule",
        via.len(),
        direct.len(),
        ms(behind)
    );
    for (name, v) in [
        ("direct to upstream", &direct),
        ("through spotd     ", &via),
    ] {
        println!(
            "  {name} : p50 {:>7.3} ms   p99 {:>7.3} ms   p99.9 {:>7.3} ms",
            ms(pct(v, 50.0)),
            ms(pct(v, 99.0)),
            ms(pct(v, 99.9))
        );
    }
    println!(
        "  added by spotd     : p50 {:>+7.3} ms   p99 {:>+7.3} ms   p99.9 {:>+7.3} ms",
        ms(pct(&via, 50.0)) - ms(pct(&direct, 50.0)),
        ms(pct(&via, 99.0)) - ms(pct(&direct, 99.0)),
        ms(pct(&via, 99.9)) - ms(pct(&direct, 99.9))
    );
    Ok(())
}

/// Sends `rate` requests a second for `seconds` to one target without waiting for the
/// answers; answers their latencies and how far behind schedule the sender fell.
async fn open_loop(
    client: &HttpClient,
    target: &(String, Option<String>),
    body: &[u8],
    rate: usize,
    seconds: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let total = rate * seconds;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut late = Duration::ZERO;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            late = late.max(now - due);
        }
        let (c, url, key, b) = (
            client.clone(),
            target.0.clone(),
            target.1.clone(),
            body.to_vec(),
        );
        tasks.push(tokio::spawn(async move {
            one(&c, &url, key.as_deref(), &b).await
        }));
    }
    let mut out = Vec::with_capacity(total);
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok((out, late))
}

/// One request; anything but 200 with a completion aborts the run (a benchmark of
/// errors would measure nothing).
async fn one(
    client: &HttpClient,
    url: &str,
    key: Option<&str>,
    body: &[u8],
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let r = client
        .send(Method::POST, url, key, &[], Some(body.to_vec()))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let took = t0.elapsed();
    if r.status != 200 {
        return Err(format!(
            "{url} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let v: Value = r.json()?;
    if v["object"] != "chat.completion" {
        return Err(format!("{url}: not a chat completion: {v}"));
    }
    Ok(took)
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p / 100.0).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
