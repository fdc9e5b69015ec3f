//! Offer query: the market index against a plain linear scan (filter all, sort, take
//! the page) over the same 100k generated offers, in the same run.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use spotd::market::{gpu_matches, Market, OfferQuery};
use spotd::model::Offer;
use spotd::money::Usd;

const N: usize = 100_000;

const GPUS: &[(&str, u32)] = &[
    ("H100 SXM", 80),
    ("H100 PCIe", 80),
    ("H200", 141),
    ("A100 80GB", 80),
    ("A100 40GB", 40),
    ("L40S", 48),
    ("RTX 6000 Ada", 48),
    ("RTX A6000", 48),
    ("RTX 4090", 24),
    ("RTX 3090", 24),
    ("A10", 24),
    ("L4", 24),
    ("T4", 16),
];
const PROVIDERS: &[&str] = &["vast", "runpod", "lambda", "lab-pool"];
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-west-2",
    "eu-central-1",
    "eu-west-1",
    "ap-south-1",
];

fn offers() -> Vec<Offer> {
    let mut s: u64 = 42;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    (0..N)
        .map(|i| {
            let (gpu, vram) = GPUS[next() as usize % GPUS.len()];
            let count = [1u32, 1, 1, 2, 4, 8][next() as usize % 6];
            let provider = PROVIDERS[i % PROVIDERS.len()];
            let per_gpu = 100_000 + (next() % 4_000_000) as i64;
            Offer {
                id: format!("{provider}:{i:06}"),
                provider: provider.into(),
                native_id: format!("{i:06}"),
                gpu: gpu.into(),
                gpu_count: count,
                vram_gb: vram,
                vcpus: 8 * count,
                ram_gb: 64 * count,
                disk_gb: 500,
                region: REGIONS[next() as usize % REGIONS.len()].into(),
                price_per_hour: Usd::from_micros(per_gpu * i64::from(count)),
                on_demand_price_per_hour: None,
                interruptible: next() % 3 != 0,
                reliability: (next() % 1000) as f64 / 1000.0,
                available: (next() % 4) as u32,
                updated_at: 0,
            }
        })
        .collect()
}

/// The baseline: what a market without an index would do for one page. The GPU rule
/// is resolved once per distinct model name, so the baseline pays for the scan and
/// the sort, not for repeated name matching.
fn linear_scan(all: &[Offer], q: &OfferQuery) -> Vec<Offer> {
    let models: Vec<&str> = GPUS
        .iter()
        .map(|(g, _)| *g)
        .filter(|g| q.filter.gpu.as_deref().is_none_or(|f| gpu_matches(f, g)))
        .collect();
    let mut v: Vec<&Offer> = all
        .iter()
        .filter(|o| models.contains(&o.gpu.as_str()) && q.filter.matches_except_gpu(o))
        .collect();
    v.sort_by(|a, b| q.sort.compare(a, b));
    v.into_iter().take(q.limit).cloned().collect()
}

fn bench(c: &mut Criterion) {
    let all = offers();
    let market = Market::from_offers(all.clone());
    let queries = [
        ("all_by_price", ""),
        ("gpu_h100_max_price", "gpu=h100&max_price=3"),
        ("gpu_rtx4090_per_gpu", "gpu=RTX+4090&sort=price_per_gpu"),
        (
            "us_4gpu_reliability",
            "region=us&min_gpu_count=4&sort=reliability",
        ),
        ("on_demand_vram", "interruptible=false&sort=-vram_gb"),
    ];
    let parsed: Vec<(&str, OfferQuery)> = queries
        .iter()
        .map(|(name, qs)| {
            (
                *name,
                OfferQuery::from_query_string(qs).expect("bench query"),
            )
        })
        .collect();
    // Both sides must return the same page, or the comparison is meaningless.
    for (name, q) in &parsed {
        let a: Vec<Offer> = market
            .query(q)
            .expect("query")
            .data
            .iter()
            .map(|o| Offer::clone(o))
            .collect();
        let b = linear_scan(&all, q);
        assert_eq!(a, b, "{name}: index and linear scan disagree");
    }
    let mut g = c.benchmark_group("offers_query");
    for (name, q) in &parsed {
        g.bench_with_input(BenchmarkId::new("index", name), q, |b, q| {
            b.iter(|| black_box(market.query(q).expect("query")))
        });
        g.bench_with_input(BenchmarkId::new("linear_scan", name), q, |b, q| {
            b.iter(|| black_box(linear_scan(&all, q)))
        });
    }
    g.finish();

    // What a refresh costs: one provider's 25k offers replaced in a 100k market.
    let vast: Vec<Offer> = all
        .iter()
        .filter(|o| o.provider == "vast")
        .cloned()
        .collect();
    c.bench_function("offers_replace_provider_25k_of_100k", |b| {
        b.iter(|| market.replace_provider("vast", vast.clone()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
