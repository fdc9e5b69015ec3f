//! Unit tests of the roll-up rules and of paging, on a real store.

use super::*;
use crate::store::Store;

const T: Millis = 1_796_083_200_000; // 2026-12-01T00:00:00Z

fn offer(provider: &str, gpu: &str, n: u32, price: i64, spot: bool, available: u32) -> Offer {
    Offer {
        id: format!("{provider}:{gpu}-{n}-{price}"),
        provider: provider.into(),
        native_id: format!("{gpu}-{n}-{price}"),
        gpu: gpu.into(),
        gpu_count: n,
        vram_gb: 80,
        vcpus: 8,
        ram_gb: 64,
        disk_gb: 100,
        region: "us".into(),
        price_per_hour: Usd(price),
        on_demand_price_per_hour: None,
        interruptible: spot,
        reliability: 0.99,
        available,
        updated_at: 0,
    }
}

#[test]
fn a_refresh_rolls_up_per_gpu_and_flag() {
    let offers = vec![
        offer("a", "H100 SXM", 1, 2_000_000, true, 2),
        offer("a", "H100 SXM", 2, 3_000_000, true, 1), // $1.5 per GPU-hour
        offer("a", "H100 SXM", 1, 4_000_000, true, 3),
        offer("a", "H100 SXM", 1, 9_000_000, false, 1),
    ];
    let r = rollups(&offers, T);
    let spot = &r[&("H100 SXM".to_string(), true)];
    assert_eq!(
        (spot.min, spot.median, spot.max),
        (Usd(1_500_000), Usd(2_000_000), Usd(4_000_000))
    );
    assert_eq!((spot.offers, spot.available, spot.refreshes), (3, 6, 1));
    let od = &r[&("H100 SXM".to_string(), false)];
    assert_eq!(
        (od.min, od.median, od.max, od.offers),
        (Usd(9_000_000), Usd(9_000_000), Usd(9_000_000), 1)
    );
    // An even count: the two middle prices' mean, half up.
    assert_eq!(median(&[Usd(1), Usd(2)]), Some(Usd(2)));
    assert_eq!(median(&[Usd(2), Usd(4), Usd(6), Usd(9)]), Some(Usd(5)));
    assert_eq!(median(&[]), None);
}

#[test]
fn refreshes_within_an_hour_merge() {
    let a = PriceRollup {
        min: Usd(10),
        median: Usd(20),
        max: Usd(30),
        offers: 5,
        available: 9,
        refreshes: 1,
        updated_at: T,
    };
    let b = PriceRollup {
        min: Usd(15),
        median: Usd(25),
        max: Usd(40),
        offers: 4,
        available: 7,
        refreshes: 1,
        updated_at: T + 60_000,
    };
    let m = merge(Some(a), b);
    assert_eq!((m.min, m.median, m.max), (Usd(10), Usd(25), Usd(40)));
    assert_eq!(
        (m.offers, m.available, m.refreshes, m.updated_at),
        (4, 7, 2, T + 60_000)
    );
    assert_eq!(hour_of(T + HOUR_MS + 1), T + HOUR_MS);
    assert_eq!(hour_of(T - 1), T - HOUR_MS);
}

async fn refresh(store: &Store, provider: &str, offers: Vec<Offer>, at: Millis) {
    let p = provider.to_string();
    store
        .write(move |tx| record(tx, &p, &offers, at))
        .await
        .unwrap();
}

fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_aggregate_providers_and_days_and_page_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("h.redb")).unwrap();
    // Two providers, three hours; provider b is dearer and has more offers.
    for h in 0..3 {
        let at = T + h * HOUR_MS + 600_000;
        let step = h * 100_000;
        refresh(
            &store,
            "a",
            vec![offer("a", "H100 SXM", 1, 2_000_000 + step, true, 1)],
            at,
        )
        .await;
        refresh(
            &store,
            "b",
            vec![
                offer("b", "H100 SXM", 1, 3_000_000 + step, true, 2),
                offer("b", "H100 SXM", 1, 5_000_000 + step, true, 2),
                offer("b", "H100 SXM", 1, 6_000_000, false, 1),
                offer("b", "A100 80GB", 1, 1_000_000, true, 1),
            ],
            at,
        )
        .await;
    }
    let now = T + 3 * HOUR_MS;
    let ask = |q: &str| {
        let q = parse_query(&pairs(q), now).unwrap();
        query(&store, q)
    };
    // One provider, hourly: one row per hour.
    let p = ask("gpu=h100&provider=b&interruptible=true").await.unwrap();
    assert_eq!(p.data.len(), 3);
    assert_eq!(p.data[0].start, T);
    assert_eq!(
        (
            p.data[0].min,
            p.data[0].max,
            p.data[0].offers,
            p.data[0].available
        ),
        (Usd(3_000_000), Usd(5_000_000), 2, 4)
    );
    assert_eq!(p.data[0].provider.as_deref(), Some("b"));
    // Every provider: one row per hour and flag, provider null, offers summed.
    let p = ask("gpu=h100 sxm&interruptible=true").await.unwrap();
    assert_eq!(p.data.len(), 3);
    let r = &p.data[2];
    assert_eq!(r.provider, None);
    assert_eq!(
        (r.min, r.max, r.offers, r.available),
        (Usd(2_200_000), Usd(5_200_000), 3, 5)
    );
    // Weighted median of medians: a's 2.2 (1 offer), b's 4.2 (2 offers) -> 4.2.
    assert_eq!(r.median, Usd(4_200_000));
    // Without the flag both series come, spot and on demand, oldest first.
    let p = ask("gpu=h100").await.unwrap();
    assert_eq!(p.data.len(), 6);
    assert!(p.data.windows(2).all(|w| w[0].start <= w[1].start));
    // A day folds the hours: exact min and max, the largest hourly offer count.
    let p = ask("gpu=h100&interval=1d&interruptible=true&provider=b")
        .await
        .unwrap();
    assert_eq!(p.data.len(), 1);
    let d = &p.data[0];
    assert_eq!(
        (d.start, d.min, d.max, d.offers),
        (T, Usd(3_000_000), Usd(5_200_000), 2)
    );
    // Without gpu: every model, A100 too.
    let all = ask("limit=1000").await.unwrap();
    assert_eq!(all.data.len(), 9);
    assert!(all.next_cursor.is_none());
    // Pages of 2 give the same rows, each once.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".into(),
        };
        let page = ask(&q).await.unwrap();
        assert!(page.data.len() <= 2);
        walked.extend(page.data);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(walked, all.data);
    // A cursor of another query is refused; since is checked.
    let c = ask("limit=1").await.unwrap().next_cursor.unwrap();
    let other = parse_query(&pairs(&format!("limit=1&gpu=a100&cursor={c}")), now);
    assert!(other.is_err());
    assert!(parse_query(&pairs("since=1h&until=2h"), now).is_err());
    assert!(parse_query(&pairs("interval=5m"), now).is_err());
    assert!(parse_query(&pairs("since=yesterday"), now).is_err());
    assert!(parse_query(&pairs("interruptible=yes"), now).is_err());
    assert!(parse_query(&pairs("limit=0"), now).is_err());
    let q = parse_query(&pairs("since=2026-12-01T01:00:00Z&until=90m"), now).unwrap();
    assert_eq!((q.since, q.until), (T + HOUR_MS, now - 90 * 60_000));
}

/// How big 90 days of the 580-offer sandbox market's history is: every hour, every
/// (cloud, GPU model, flag) group of the real sandbox catalogues, written as the
/// refreshes write them. Run by hand:
/// `cargo test --lib history_size_of_90_days -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures file growth over 90 simulated days (about 20 s); run by hand"]
async fn history_size_of_90_days() {
    let clouds = crate::sandbox::catalogues_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.redb");
    let store = Store::open(&path).unwrap();
    let empty = std::fs::metadata(&path).unwrap().len();
    let mut rows_per_hour = 0;
    for (name, offers) in &clouds {
        rows_per_hour += rollups(offers, T).len();
        let _ = name;
    }
    let hours = 90 * 24;
    for day in 0..90i64 {
        let clouds = clouds.clone();
        store
            .write(move |tx| {
                for h in 0..24 {
                    let at = T + (day * 24 + h) * HOUR_MS;
                    for (name, offers) in &clouds {
                        record(tx, name, offers, at)?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    }
    store.close();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut db = redb::Database::open(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    let compacted = std::fs::metadata(&path).unwrap().len();
    let rows = rows_per_hour * hours;
    println!(
        "rows/hour {rows_per_hour}, rows {rows}, file {empty} -> {size} bytes ({} per row), compacted {compacted} ({} per row)",
        (size - empty) / rows as u64,
        compacted / rows as u64
    );
    assert!(compacted < 64 * 1024 * 1024);
}
