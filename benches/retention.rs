//! Retention under a steady load: the redb file's size, day after simulated day, with
//! the fold of per-request charges on (`billing.request_detail_days`) and, in the same
//! process as the baseline, with it effectively off (a detail window longer than the
//! run). Each simulated day sends the same number of hosted chat completions and
//! idempotent credits through the real daemon's API (sandbox mode, manual clock),
//! then moves the clock a day, hourly workers (retention included) running as they
//! would.
//!
//! `cargo bench --bench retention` (env: DAYS=40, REQUESTS_PER_DAY=1000, DETAIL_DAYS=7).

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;
use spotd::clock::Clock;
use spotd::config::Config;
use spotd::daemon::Daemon;
use spotd::http_client::HttpClient;
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_796_083_200_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let days = env_num("DAYS", 40);
    let per_day = env_num("REQUESTS_PER_DAY", 1000);
    let detail = env_num("DETAIL_DAYS", 7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let folded = rt
        .block_on(run(days, per_day, detail))
        .expect("run with the fold");
    let kept = rt
        .block_on(run(days, per_day, 100_000))
        .expect("run without the fold");
    println!(
        "retention: {days} simulated days, {per_day} hosted requests + 20 idempotent credits a day"
    );
    println!("  day | file, fold after {detail} d | entries | file, no fold | entries");
    for (f, k) in folded.iter().zip(&kept) {
        if f.day % 5 == 0 || f.day == days {
            println!(
                "  {:>3} | {:>10.1} MB          | {:>7} | {:>9.1} MB | {:>7}",
                f.day,
                f.bytes as f64 / 1e6,
                f.entries,
                k.bytes as f64 / 1e6,
                k.entries
            );
        }
    }
    let growth = |s: &[Sample]| {
        let a = &s[s.len() / 2];
        let b = &s[s.len() - 1];
        (b.bytes as f64 - a.bytes as f64) / 1e6 / (b.day - a.day).max(1) as f64
    };
    println!(
        "  file growth over the second half: {:+.3} MB/day with the fold, {:+.3} MB/day without",
        growth(&folded),
        growth(&kept)
    );
}

struct Sample {
    day: u64,
    bytes: u64,
    entries: usize,
}

async fn run(days: u64, per_day: u64, detail_days: u64) -> Result<Vec<Sample>, String> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        force_sandbox: true,
        ..Config::default()
    };
    cfg.limits.requests_per_second = 1_000_000;
    cfg.limits.burst = 1_000_000;
    cfg.sandbox.refresh_seconds = 3600;
    cfg.sandbox.preemptions_per_hour = 0.0;
    cfg.billing.request_detail_days = detail_days;
    let clock = Clock::manual(T0);
    let mut daemon = Daemon::open(cfg, clock.clone()).await?;
    daemon.set_cadence(Duration::from_secs(3600), Duration::from_secs(3600));
    let store = daemon.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.serve(listener, shutdown.clone()));
    clock.settle().await.map_err(|e| format!("{e:?}"))?;
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).map(|s| s.trim().to_string());
    let key = read("demo.key").map_err(|e| e.to_string())?;
    let admin = read("admin.token").map_err(|e| e.to_string())?;
    let demo: String = store
        .read(|rx| rx.meta("demo_account"))
        .await
        .map_err(|e: spotd::store::StoreError| e.to_string())?
        .ok_or("no demo account")?;
    let client = HttpClient::new(Duration::from_secs(30));
    let body = serde_json::to_vec(&json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "How big does the ledger get?"}],
        "max_tokens": 8,
    }))
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for day in 1..=days {
        // The day's requests, 16 at a time.
        let mut sent = 0;
        while sent < per_day {
            let n = (per_day - sent).min(16);
            let mut batch = Vec::new();
            for _ in 0..n {
                let (c, u, k, b) = (client.clone(), url.clone(), key.clone(), body.clone());
                batch.push(tokio::spawn(async move {
                    c.send(
                        Method::POST,
                        &format!("{u}/v1/chat/completions"),
                        Some(&k),
                        &[],
                        Some(b),
                    )
                    .await
                }));
            }
            for b in batch {
                let r = b
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                if r.status != 200 {
                    return Err(format!("chat answered {}", r.status));
                }
            }
            sent += n;
        }
        for i in 0..20 {
            let idem = format!("d{day}-{i}");
            let r = client
                .send(
                    Method::POST,
                    &format!("{url}/admin/v1/accounts/{demo}/credits"),
                    Some(&admin),
                    &[("idempotency-key", &idem)],
                    Some(json!({"amount": "0.01"}).to_string().into_bytes()),
                )
                .await
                .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("credit answered {}", r.status));
            }
        }
        clock
            .advance_settled(86_400_000)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let d = demo.clone();
        let entries = store
            .read(move |rx| rx.ledger_after(&d, 0, usize::MAX).map(|v| v.len()))
            .await
            .map_err(|e: spotd::store::StoreError| e.to_string())?;
        let bytes = std::fs::metadata(dir.path().join("spotd.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        out.push(Sample {
            day,
            bytes,
            entries,
        });
    }
    shutdown.cancel();
    task.await.map_err(|e| e.to_string())??;
    eprintln!(
        "  (run with request_detail_days = {detail_days}: {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}
