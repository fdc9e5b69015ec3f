//! Reads against history: the same requests timed on a young data dir (10,000 ledger
//! entries: 200 ended rentals, 60 of them on the account read, so every page is full)
//! and on ones with 100k and 1M entries (2k and 20k ended rentals, 30% on that account),
//! in the same process, with RSS and the file's size.
//!
//! The history is written straight into the store (holds, charges and releases through
//! the ledger functions the daemon uses, many per transaction), then the real daemon is
//! opened on it (sandbox mode, manual clock) and served on loopback. Each read is timed
//! as the median of its runs; the ratio divides by the young dir's figure.
//!
//! Run: `cargo bench --bench scale` (SCALE_SIZES=10000,100000 to choose the sizes; 0 is a fresh dir).

#[path = "support/mod.rs"]
mod support;
use std::time::{Duration, Instant};
use support::offer;

use spotd::clock::Clock;
use spotd::daemon::Daemon;
use spotd::http_client::HttpClient;
use spotd::ledger;
use spotd::model::{Account, Rental, RentalState};
use spotd::money::Usd;
use spotd::store::Store;

const T0: i64 = 1_796_083_200_000;
/// Charges per ended rental.
const CHARGES_PER_RENTAL: usize = 48;

/// Writes `entries` ledger entries of ended rentals into `path`: 30% of the rentals on
/// one account ("big"), the rest over 20 others. Answers the big account's id.
fn build_history(path: &std::path::Path, entries: usize) -> String {
    let store = Store::open(path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let accounts: Vec<String> = (0..21).map(|i| format!("acct_hist{i:02}")).collect();
    let ids = accounts.clone();
    rt.block_on(store.write(move |tx| {
        for id in &ids {
            let mut a = Account::new(id.clone(), id.clone(), T0);
            ledger::credit(tx, &mut a, Usd::from_dollars(1_000_000), None, T0)?;
            tx.put_account(&a)?;
        }
        Ok::<_, spotd::error::Error>(())
    }))
    .unwrap();
    let rentals = entries / (CHARGES_PER_RENTAL + 2);
    let per_txn = 200;
    let mut n = 0;
    while n < rentals {
        let batch: Vec<usize> = (n..(n + per_txn).min(rentals)).collect();
        n += batch.len();
        let accts = accounts.clone();
        rt.block_on(store.write(move |tx| {
            for i in batch {
                let acct = if i % 10 < 3 {
                    &accts[0]
                } else {
                    &accts[1 + i % 20]
                };
                let mut a = tx.account(acct)?.unwrap();
                let at = T0 + i as i64 * 1000;
                let mut r = Rental::intent(
                    format!("rnt_hist{i:08}"),
                    acct.clone(),
                    offer(),
                    Usd(2_000_000),
                    at,
                );
                ledger::place_hold(tx, &mut a, &mut r, at)?;
                r.state = RentalState::Running;
                r.started_at = Some(at);
                for k in 0..CHARGES_PER_RENTAL {
                    ledger::charge_rental(
                        tx,
                        &mut a,
                        &mut r,
                        Usd(6_944),
                        None,
                        at + k as i64 * 10_000,
                    )?;
                }
                ledger::release_hold(tx, &mut a, &mut r, at)?;
                r.state = RentalState::Terminated;
                r.ended_at = Some(at + CHARGES_PER_RENTAL as i64 * 10_000);
                tx.put_rental(&r)?;
                tx.put_account(&a)?;
            }
            Ok::<_, spotd::error::Error>(())
        }))
        .unwrap();
    }
    store.close();
    accounts[0].clone()
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

struct Row {
    entries: usize,
    reads: Vec<(&'static str, Duration)>,
    rss_mb: f64,
    file_mb: f64,
}

async fn measure(entries: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spotd.redb");
    let big = if entries > 0 {
        let path = db.clone();
        let built = Instant::now();
        let id = tokio::task::spawn_blocking(move || build_history(&path, entries))
            .await
            .unwrap();
        eprintln!(
            "{entries} entries written in {:.1} s",
            built.elapsed().as_secs_f64()
        );
        Some(id)
    } else {
        None
    };
    let toml = dir.path().join("bench.toml");
    std::fs::write(
        &toml,
        "[limits]\nrequests_per_second = 100000\nburst = 100000\n",
    )
    .unwrap();
    let flags = spotd::config::ServeFlags {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_path_buf()),
        config: Some(toml),
        sandbox: true,
    };
    let (cfg, _) = spotd::config::load(&flags, &[]).unwrap();
    let mut daemon = Daemon::open(cfg, Clock::manual(T0 + 365 * 86_400_000))
        .await
        .unwrap();
    daemon.quiet();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(daemon.serve(listener, stop.clone()));
    let read = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let (admin, demo) = (read("admin.token"), read("demo.key"));
    let client = HttpClient::new(Duration::from_secs(60));
    // The big account's key (the demo account on a fresh dir).
    let key = match &big {
        Some(id) => {
            let r = client
                .send(
                    hyper::Method::POST,
                    &format!("{url}/admin/v1/accounts/{id}/keys"),
                    Some(&admin),
                    &[],
                    None,
                )
                .await
                .unwrap();
            r.json::<serde_json::Value>().unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        }
        None => demo,
    };
    let reads: [(&str, &str, bool); 4] = [
        ("GET /metrics", "/metrics", true),
        (
            "GET /v1/gpus/rentals?limit=50",
            "/v1/gpus/rentals?limit=50",
            false,
        ),
        (
            "GET /admin/v1/rentals?limit=50",
            "/admin/v1/rentals?limit=50",
            true,
        ),
        ("GET /v1/models", "/v1/models", false),
    ];
    let mut out = Vec::new();
    for (name, path, as_admin) in reads {
        let k = if as_admin { &admin } else { &key };
        let mut times = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            let r = client
                .send(
                    hyper::Method::GET,
                    &format!("{url}{path}"),
                    Some(k),
                    &[],
                    None,
                )
                .await
                .unwrap();
            assert_eq!(r.status.as_u16(), 200, "{name}");
            times.push(t.elapsed());
        }
        times.sort();
        out.push((name, times[times.len() / 2]));
    }
    let rss_mb = rss_kb() as f64 / 1024.0;
    stop.cancel();
    let _ = task.await;
    let file_mb = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    Row {
        entries,
        reads: out,
        rss_mb,
        file_mb,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows: Vec<Row> = sizes.iter().map(|&n| rt.block_on(measure(n))).collect();
    let base = &rows[0];
    println!(
        "{:<34} {}",
        "read (median of 15)",
        rows.iter()
            .map(|r| format!("{:>22}", format!("{} entries", r.entries)))
            .collect::<String>()
    );
    for (i, (name, _)) in base.reads.iter().enumerate() {
        let cells: String = rows
            .iter()
            .map(|r| {
                let d = r.reads[i].1;
                let ratio = d.as_secs_f64() / base.reads[i].1.as_secs_f64();
                format!(
                    "{:>22}",
                    format!("{:.2} ms ({ratio:.1}x)", d.as_secs_f64() * 1e3)
                )
            })
            .collect();
        println!("{name:<34} {cells}");
    }
    println!(
        "{:<34} {}",
        "RSS after the reads (MB, cumulative)",
        rows.iter()
            .map(|r| format!("{:>22.0}", r.rss_mb))
            .collect::<String>()
    );
    println!(
        "{:<34} {}",
        "redb file (MB)",
        rows.iter()
            .map(|r| format!("{:>22.1}", r.file_mb))
            .collect::<String>()
    );
}
