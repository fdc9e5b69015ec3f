//! The offers query over HTTP: `GET /v1/gpus/offers?gpu=h100&sort=price&limit=50` on a
//! 100,000-offer market served by the real daemon, against raw hyper on the same
//! runtime answering the same page (typed structs serialized by serde_json on every
//! request, so both bodies are the same bytes), in alternating `wrk` phases of one run.
//! Also the daemon's RSS and peak RSS around its first refresh of those 100k offers
//! from an `http` provider on loopback.
//!
//! `cargo bench --bench offers_http` (needs `wrk`: `apt-get install wrk`; env
//! `OFFERS=100000`, `PHASE_SECONDS=3`, `ROUNDS=3`).

use std::convert::Infallible;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spotd::clock::Clock;
use spotd::config::{Config, ProviderConfig, ProviderKind};
use spotd::daemon::Daemon;
use spotd::http_client::HttpClient;
use tokio_util::sync::CancellationToken;

const GPUS: &[(&str, u32)] = &[
    ("H100 SXM", 80),
    ("H100 PCIe", 80),
    ("H200", 141),
    ("A100 80GB", 80),
    ("L40S", 48),
    ("RTX 4090", 24),
    ("RTX 3090", 24),
    ("A10", 24),
    ("L4", 24),
    ("T4", 16),
];
const REGIONS: &[&str] = &["us-east-1", "us-west-2", "eu-central-1", "eu-west-1"];

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` offers in the `http` provider protocol's shape (SPEC section 5).
fn provider_offers(n: usize) -> Vec<u8> {
    let mut s: u64 = 7;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    // Written as text, not built as a `Value` tree, so the bench's own allocations do
    // not hide the daemon's in the RSS figures.
    let mut out = String::with_capacity(n * 260);
    out.push_str(r#"{"offers":["#);
    for i in 0..n {
        let (gpu, vram) = GPUS[next() as usize % GPUS.len()];
        let count = [1u32, 1, 2, 4, 8][next() as usize % 5];
        let cents = (20 + next() % 400) * u64::from(count);
        let region = REGIONS[next() as usize % REGIONS.len()];
        let interruptible = next() % 3 != 0;
        let reliability = next() % 1000;
        let available = 1 + next() % 4;
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":"o{i:06}","gpu":"{gpu}","gpu_count":{count},"vram_gb":{vram},"vcpus":{},"ram_gb":{},"disk_gb":500,"region":"{region}","price_per_hour":{}.{:02},"on_demand_price_per_hour":null,"interruptible":{interruptible},"reliability":0.{reliability:03},"available":{available}}}"#,
            8 * count,
            64 * count,
            cents / 100,
            cents % 100
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}

/// The offer as spotd shows it, typed: what raw hyper serializes per request.
#[derive(Serialize, Deserialize, Clone)]
struct OfferView {
    id: String,
    object: String,
    provider: String,
    gpu: String,
    gpu_count: u32,
    vram_gb: u32,
    vcpus: u32,
    ram_gb: u32,
    disk_gb: u32,
    region: String,
    price_per_hour: serde_json::Number,
    price_per_gpu_hour: serde_json::Number,
    on_demand_price_per_hour: Option<serde_json::Number>,
    interruptible: bool,
    reliability: f64,
    available: u32,
    updated_at: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct Page {
    object: String,
    data: Vec<OfferView>,
    next_cursor: Option<String>,
}

async fn serve_fn<F>(f: F) -> String
where
    F: Fn() -> Bytes + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let f = Arc::new(f);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = f();
                    async move {
                        let mut r = Response::new(Full::new(body));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One `wrk` phase: requests per second.
fn wrk(url: &str, key: Option<&str>, seconds: usize) -> f64 {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency", url]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    let out = cmd.output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        panic!("wrk saw errors from {url}:\n{text}");
    }
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"))
}

fn main() {
    let n = env_num("OFFERS", 100_000);
    let phase = env_num("PHASE_SECONDS", 3);
    let rounds = env_num("ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let body = Bytes::from(provider_offers(n));
        let provider = serve_fn(move || body.clone()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.limits.requests_per_second = 1_000_000;
        cfg.limits.burst = 1_000_000;
        cfg.providers = vec![ProviderConfig {
            name: "pool".into(),
            kind: ProviderKind::Http,
            api_key_env: None,
            refresh_seconds: 3600,
            base_url: Some(provider),
            calls_per_minute: 600,
            stale_after_seconds: 7200,
        }];
        let before = rss_kib();
        let daemon = Daemon::open(cfg, Clock::system()).await.expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon.serve(listener, shutdown.clone()));
        let admin = loop {
            if let Ok(t) = std::fs::read_to_string(dir.path().join("admin.token")) {
                break t.trim().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client = HttpClient::new(Duration::from_secs(60));
        let r = client
            .post_json(
                &format!("{url}/admin/v1/accounts"),
                Some(&admin),
                &json!({"name": "bench", "credit": 1}),
            )
            .await
            .expect("account");
        let key = r.json::<Value>().expect("json")["api_key"]["key"]
            .as_str()
            .expect("key")
            .to_string();
        let query = format!("{url}/v1/gpus/offers?gpu=h100&sort=price&limit=50");
        let page: Page = loop {
            let r = client.get(&query, Some(&key)).await.expect("offers");
            let p: Page = r.json().expect("page");
            if p.data.len() == 50 {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let after = rss_kib();
        let spotd_bytes = client.get(&query, Some(&key)).await.expect("offers").body;
        let raw_page = page.clone();
        let raw = serve_fn(move || Bytes::from(serde_json::to_vec(&raw_page).expect("json"))).await;
        let raw_bytes = client.get(&raw, None).await.expect("raw").body;
        println!(
            "offers over HTTP: {n} offers; a page of 50 is {} bytes from spotd, {} from raw hyper",
            spotd_bytes.len(),
            raw_bytes.len()
        );
        println!(
            "  RSS {} -> {} MB after the first refresh (peak {} MB; before it {} MB)",
            before.0 / 1024,
            after.0 / 1024,
            after.1 / 1024,
            before.1 / 1024
        );
        let (mut s_all, mut r_all) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (s, r) = if round % 2 == 0 {
                let r = wrk(&raw, None, phase);
                (wrk(&query, Some(&key), phase), r)
            } else {
                let s = wrk(&query, Some(&key), phase);
                (s, wrk(&raw, None, phase))
            };
            println!(
                "  round {}: spotd {:>8.0} req/s   raw hyper {:>8.0} req/s   spotd/raw {:.2}",
                round + 1,
                s,
                r,
                s / r
            );
            s_all.push(s);
            r_all.push(r);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (s, r) = (med(&mut s_all), med(&mut r_all));
        println!(
            "  median: spotd {s:.0} req/s, raw hyper {r:.0} req/s, spotd/raw {:.2}",
            s / r
        );
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    });
}
