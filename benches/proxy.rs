//! Proxy overhead: the same non-streaming `gpt-4o-mini` chat completion sent through
//! spotd (`/v1/chat/completions`: auth, rate limit, catalogue, upstream call, per-token
//! billing) and straight to the sandbox hosted upstream spotd proxies to, interleaved
//! under the same load in the same run. Prints p50 and p99 of both and the latency
//! spotd adds.
//!
//! The daemon runs in-process in sandbox mode (its hosted upstream is an in-process
//! loopback server), so both paths share the same machine, runtime and upstream; the
//! difference is spotd's work plus one extra loopback hop.
//!
//! `cargo bench --bench proxy` (optionally `-- WORKERS REQUESTS_PER_WORKER`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};
use spotd::config::Config;
use spotd::http_client::HttpClient;
use tokio_util::sync::CancellationToken;

const DEFAULT_WORKERS: usize = 8;
const DEFAULT_REQUESTS_PER_WORKER: usize = 250;
const WARMUP_PER_TARGET: usize = 50;

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let workers = nums.first().copied().unwrap_or(DEFAULT_WORKERS).max(1);
    let per_worker = nums
        .get(1)
        .copied()
        .unwrap_or(DEFAULT_REQUESTS_PER_WORKER)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(bench(workers, per_worker)) {
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

async fn bench(workers: usize, per_worker: usize) -> Result<(), String> {
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

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, targets, body) = (client.clone(), targets.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
            for i in 0..per_worker {
                // Alternate which path goes first so neither always sees the other's
                // wake-up cost.
                let order = if (i + w) % 2 == 0 { [0, 1] } else { [1, 0] };
                for t in order {
                    let (url, key) = &targets[t];
                    lat[t].push(one(&client, url, key.as_deref(), &body).await?);
                }
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut via = Vec::new();
    let mut direct = Vec::new();
    for t in tasks {
        let [a, b] = t.await.map_err(|e| e.to_string())??;
        via.extend(a);
        direct.extend(b);
    }
    let elapsed = started.elapsed();

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), daemon).await;

    via.sort();
    direct.sort();
    let (v50, v99) = (pct(&via, 50), pct(&via, 99));
    let (d50, d99) = (pct(&direct, 50), pct(&direct, 99));
    println!(
        "proxy overhead: {workers} workers x {per_worker} requests per path, interleaved, {:.1} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  direct to upstream : p50 {:>8.3} ms   p99 {:>8.3} ms",
        ms(d50),
        ms(d99)
    );
    println!(
        "  through spotd      : p50 {:>8.3} ms   p99 {:>8.3} ms",
        ms(v50),
        ms(v99)
    );
    println!(
        "  added by spotd     : p50 {:>+8.3} ms   p99 {:>+8.3} ms",
        ms(v50) - ms(d50),
        ms(v99) - ms(d99)
    );
    println!(
        "  ratio spotd/direct : p50 {:>8.2}x     p99 {:>8.2}x",
        ms(v50) / ms(d50).max(1e-9),
        ms(v99) / ms(d99).max(1e-9)
    );
    Ok(())
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
fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
