use std::collections::HashSet;

use super::query::DEFAULT_LIMIT;
use super::*;
use crate::money::Usd;
use crate::providers::ProviderOffer;

const GPUS: &[(&str, u32)] = &[
    ("H100 SXM", 80),
    ("H100 PCIe", 80),
    ("A100 80GB", 80),
    ("A100 40GB", 40),
    ("RTX 4090", 24),
    ("A10", 24),
    ("L4", 24),
    ("L40S", 48),
];
const PROVIDERS: &[&str] = &["vast", "runpod", "lambda"];
const REGIONS: &[&str] = &["us-east-1", "us-west-2", "eu-central-1", "ap-south"];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() as usize) % xs.len()]
    }
}

fn gen_offers(provider: &str, n: usize, seed: u64) -> Vec<Offer> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|i| {
            let (gpu, vram) = r.pick(GPUS);
            let count = r.pick(&[1u32, 1, 2, 4, 8]);
            Offer {
                id: format!("{provider}:{i:05}"),
                provider: provider.into(),
                native_id: format!("{i:05}"),
                gpu: gpu.into(),
                gpu_count: count,
                vram_gb: vram,
                vcpus: 8 * count,
                ram_gb: 64 * count,
                disk_gb: 500,
                region: r.pick(REGIONS).into(),
                // Few distinct prices, so ties (broken by id) are common.
                price_per_hour: Usd::from_micros(((r.next() % 40) as i64 + 1) * 100_000),
                on_demand_price_per_hour: None,
                interruptible: r.next().is_multiple_of(2),
                reliability: (r.next() % 5) as f64 / 4.0,
                available: (r.next() % 3) as u32,
                updated_at: 1000,
            }
        })
        .collect()
}

fn market() -> (Market, Vec<Offer>) {
    let mut all = Vec::new();
    for (i, p) in PROVIDERS.iter().enumerate() {
        all.extend(gen_offers(p, 700, i as u64 + 7));
    }
    (Market::from_offers(all.clone()), all)
}

/// The reference: filter everything, sort, no index.
fn linear(all: &[Offer], f: &OfferFilter, sort: Sort) -> Vec<String> {
    let mut v: Vec<&Offer> = all.iter().filter(|o| f.matches(o)).collect();
    v.sort_by(|a, b| sort.compare(a, b));
    v.into_iter().map(|o| o.id.clone()).collect()
}

fn walk_all(m: &Market, qs: &str) -> Vec<String> {
    let mut q = OfferQuery::from_query_string(qs).unwrap();
    let mut ids = Vec::new();
    loop {
        let page = m.query(&q).unwrap();
        assert!(page.data.len() <= q.limit);
        ids.extend(page.data.into_iter().map(|o| o.id.clone()));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return ids,
        }
    }
}

#[test]
fn normalization_table() {
    for (raw, want) in [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("h100_pcie", "H100 PCIe"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("H100-SXM5", "H100 SXM"),
        ("gpu_8x_h100_sxm5", "H100 SXM"),
        ("H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("GH200", "GH200"),
        ("A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB"),
        ("A100 PCIE 40GB", "A100 40GB"),
        ("a100_sxm4_40gb", "A100 40GB"),
        ("RTX_4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("rtx4090", "RTX 4090"),
        ("RTX 3090", "RTX 3090"),
        ("RTX 3090 Ti", "RTX 3090 Ti"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
        ("RTX A6000", "RTX A6000"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10", "A10"),
        ("A10G", "A10G"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("RTX A4000", "RTX A4000"),
        ("  Mystery Accelerator 9  ", "Mystery Accelerator 9"),
        ("RTX A1000", "RTX A1000"),
        ("", ""),
    ] {
        assert_eq!(normalize_gpu(raw), want, "normalize_gpu({raw:?})");
    }
}

#[test]
fn bare_a100_uses_memory_and_offer_id_has_provider_prefix() {
    let p = ProviderOffer {
        id: "m-17".into(),
        gpu: "NVIDIA A100".into(),
        gpu_count: 2,
        vram_gb: 40,
        vcpus: 16,
        ram_gb: 128,
        disk_gb: 100,
        region: " us-east-1 ".into(),
        price_per_hour: Usd::parse("2.5").unwrap(),
        on_demand_price_per_hour: None,
        interruptible: true,
        reliability: f64::NAN,
        available: 1,
    };
    let o = offer_from_provider("vast", p.clone(), 42);
    assert_eq!(o.id, "vast:m-17");
    assert_eq!(o.native_id, "m-17");
    assert_eq!(o.gpu, "A100 40GB");
    assert_eq!(o.region, "us-east-1");
    assert_eq!(o.reliability, 0.0);
    assert_eq!(o.updated_at, 42);
    let o = offer_from_provider("vast", ProviderOffer { vram_gb: 80, ..p }, 42);
    assert_eq!(o.gpu, "A100 80GB");
}

#[test]
fn gpu_match_rule() {
    let yes = [
        ("h100", "H100 SXM"),
        ("h100", "H100 PCIe"),
        ("H100 SXM", "H100 SXM"),
        ("h100-pcie", "H100 PCIe"),
        ("RTX 4090", "RTX 4090"),
        ("rtx4090", "RTX 4090"),
        ("4090", "RTX 4090"),
        ("a100", "A100 80GB"),
        ("A100 80gb", "A100 80GB"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("a10", "A10"),
    ];
    for (f, g) in yes {
        assert!(gpu_matches(f, g), "{f:?} should match {g:?}");
    }
    let no = [
        ("a10", "A100 80GB"),
        ("l4", "L40S"),
        ("h100 pcie", "H100 SXM"),
        ("h200", "H100 SXM"),
        ("4080", "RTX 4090"),
        ("a100 40gb", "A100 80GB"),
    ];
    for (f, g) in no {
        assert!(!gpu_matches(f, g), "{f:?} should not match {g:?}");
    }
}

#[test]
fn every_filter_and_sort_agrees_with_a_linear_scan() {
    let (m, all) = market();
    let filters = [
        "",
        "gpu=h100",
        "gpu=RTX+4090",
        "gpu=a100%2080gb",
        "gpu=nothing-like-this",
        "gpu_count=2",
        "min_gpu_count=4",
        "min_vram_gb=48",
        "max_price=1.5",
        "max_price=0",
        "provider=RUNPOD",
        "region=us",
        "region=eu-central-1",
        "interruptible=true",
        "interruptible=false",
        "gpu=h100&max_price=2.2&interruptible=false&region=us-east",
        "gpu=a100&min_gpu_count=2&provider=vast",
    ];
    for f in filters {
        for sort in Sort::ALL {
            let qs = format!("{f}&sort={}&limit=37", sort.as_str());
            let q = OfferQuery::from_query_string(&qs).unwrap();
            let want = linear(&all, &q.filter, sort);
            let got = walk_all(&m, &qs);
            assert_eq!(got, want, "query {qs}");
            if f.is_empty() {
                assert_eq!(got.len(), all.len());
            }
        }
    }
    // The filters are not vacuous: each one of these narrows the market.
    for f in ["gpu=h100", "max_price=1.5", "region=us", "min_vram_gb=48"] {
        let n = walk_all(&m, f).len();
        assert!(n > 0 && n < all.len(), "{f}: {n}");
    }
}

#[test]
fn sorts_order_as_documented() {
    let (m, _) = market();
    let q = |s: &str| {
        m.query(&OfferQuery::from_query_string(s).unwrap())
            .unwrap()
            .data
    };
    let d = q("limit=1000");
    assert_eq!(d.len(), 1000);
    assert!(d
        .windows(2)
        .all(|w| (w[0].price_per_hour, &w[0].id) < (w[1].price_per_hour, &w[1].id)));
    let d = q("sort=-price&limit=1000");
    assert!(d
        .windows(2)
        .all(|w| w[0].price_per_hour >= w[1].price_per_hour));
    assert!(d
        .windows(2)
        .all(|w| w[0].price_per_hour != w[1].price_per_hour || w[0].id < w[1].id));
    let d = q("sort=price_per_gpu&limit=1000");
    assert!(d
        .windows(2)
        .all(|w| w[0].price_per_gpu_hour() <= w[1].price_per_gpu_hour()));
    let d = q("sort=reliability&limit=1000");
    assert_eq!(d[0].reliability, 1.0);
    assert!(d.windows(2).all(|w| w[0].reliability >= w[1].reliability));
    let d = q("sort=-vram_gb&limit=1000");
    assert_eq!(d[0].vram_gb, 80);
    assert!(d.windows(2).all(|w| w[0].vram_gb >= w[1].vram_gb));
}

#[test]
fn limit_bounds_and_default() {
    let (m, _) = market();
    let page = |s: &str| m.query(&OfferQuery::from_query_string(s).unwrap());
    assert_eq!(page("").unwrap().data.len(), 50);
    assert_eq!(page("limit=1").unwrap().data.len(), 1);
    assert_eq!(page("limit=1000").unwrap().data.len(), 1000);
    for bad in ["limit=0", "limit=1001", "limit=-1", "limit=ten"] {
        let e = OfferQuery::from_query_string(bad).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { param: Some(p), message } if p == "limit" && message.contains("1 to 1000")),
            "{bad}: {e:?}"
        );
    }
    let q = OfferQuery {
        limit: 0,
        ..OfferQuery::default()
    };
    assert!(m.query(&q).is_err());
}

#[test]
fn bad_parameters_name_themselves() {
    for (qs, param, words) in [
        ("gpu_count=0", "gpu_count", "at least 1"),
        ("gpu_count=two", "gpu_count", "whole number"),
        ("min_gpu_count=-3", "min_gpu_count", "whole number"),
        ("min_vram_gb=1.5", "min_vram_gb", "whole number"),
        ("max_price=abc", "max_price", "USD amount"),
        ("max_price=1.1234567", "max_price", "6 decimals"),
        ("max_price=-1", "max_price", "negative"),
        ("interruptible=yes", "interruptible", "true or false"),
        ("sort=cheapest", "sort", "price_per_gpu"),
        ("colour=red", "colour", "unknown query parameter 'colour'"),
        ("gpu=a&gpu=b", "gpu", "more than once"),
        ("gpu=%zz", "gpu", "percent escape"),
        ("cursor=abc", "cursor", "cursor"),
    ] {
        let err = OfferQuery::from_query_string(qs).and_then(|q| {
            let (m, _) = (Market::new(), ());
            m.query(&q)
        });
        match err {
            Err(Error::Invalid {
                param: Some(p),
                message,
            }) => {
                assert_eq!(p, param, "{qs}");
                assert!(message.contains(words), "{qs}: {message}");
            }
            other => panic!("{qs}: {other:?}"),
        }
    }
}

#[test]
fn query_string_decoding() {
    let q = OfferQuery::from_query_string(
        "gpu=RTX%204090&region=us+east&max_price=2.50&interruptible=false&provider=&sort=-price",
    )
    .unwrap();
    assert_eq!(q.filter.gpu.as_deref(), Some("RTX 4090"));
    assert_eq!(q.filter.region.as_deref(), Some("us east"));
    assert_eq!(q.filter.max_price, Some(Usd::from_micros(2_500_000)));
    assert_eq!(q.filter.interruptible, Some(false));
    assert_eq!(q.filter.provider, None);
    assert_eq!(q.sort, Sort::PriceDesc);
    assert_eq!(q.limit, DEFAULT_LIMIT);
}

#[test]
fn pagination_is_stable_while_prices_change() {
    let (m, all) = market();
    let qs = "gpu=a100&limit=50";
    let want = linear(
        &all,
        &OfferQuery::from_query_string(qs).unwrap().filter,
        Sort::Price,
    );
    let mut q = OfferQuery::from_query_string(qs).unwrap();
    let mut got = Vec::new();
    let mut round = 0u64;
    loop {
        let page = m.query(&q).unwrap();
        got.extend(page.data.into_iter().map(|o| o.id.clone()));
        // Every provider reprices everything between two pages.
        round += 1;
        let p = PROVIDERS[(round as usize) % PROVIDERS.len()];
        let repriced = gen_offers(p, 700, 1000 + round);
        let i = PROVIDERS.iter().position(|x| *x == p).unwrap() as u64;
        let keep_gpu = gen_offers(p, 700, i + 7);
        // Same ids and models, new prices: the worst case for keyset pagination.
        let moved: Vec<Offer> = keep_gpu
            .into_iter()
            .zip(repriced)
            .map(|(mut o, r)| {
                o.price_per_hour = r.price_per_hour;
                o
            })
            .collect();
        m.replace_provider(p, moved);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
        assert!(
            round < (KEEP_SNAPSHOTS as u64),
            "walk outlived the snapshots"
        );
    }
    assert_eq!(got, want, "the walk reads the snapshot it started on");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len());
}

#[test]
fn expired_snapshot_falls_back_to_keyset() {
    let (m, all) = market();
    let q = OfferQuery::from_query_string("sort=-vram_gb&limit=100").unwrap();
    let first = m.query(&q).unwrap();
    for _ in 0..KEEP_SNAPSHOTS {
        // Unchanged offers, new snapshots: the first one is evicted.
        m.replace_provider(
            "vast",
            all.iter()
                .filter(|o| o.provider == "vast")
                .cloned()
                .collect(),
        );
    }
    let mut q2 = q.clone();
    q2.cursor = first.next_cursor.clone();
    let second = m.query(&q2).unwrap();
    let want = linear(&all, &q.filter, Sort::VramDesc);
    let got: Vec<String> = first
        .data
        .iter()
        .chain(&second.data)
        .map(|o| o.id.clone())
        .collect();
    assert_eq!(got, want[..200]);
}

#[test]
fn cursor_of_another_query_or_garbage_is_refused() {
    let (m, _) = market();
    let a = m
        .query(&OfferQuery::from_query_string("gpu=h100&limit=5").unwrap())
        .unwrap();
    let c = a.next_cursor.unwrap();
    for qs in [
        format!("gpu=a100&limit=5&cursor={c}"),
        format!("gpu=h100&sort=-price&cursor={c}"),
        format!("gpu=h100&cursor={}", &c[..c.len() - 2]),
        format!("gpu=h100&cursor={}00", c),
        "cursor=zz".to_string(),
    ] {
        let q = OfferQuery::from_query_string(&qs).unwrap();
        match m.query(&q) {
            Err(Error::Invalid { param: Some(p), .. }) => assert_eq!(p, "cursor", "{qs}"),
            other => panic!("{qs}: {other:?}"),
        }
    }
    // A different page size is the same query: the cursor still works.
    let q = OfferQuery::from_query_string(&format!("gpu=h100&limit=7&cursor={c}")).unwrap();
    assert_eq!(m.query(&q).unwrap().data.len(), 7);
}

#[test]
fn cheapest_skips_unavailable_and_respects_filter() {
    let (m, all) = market();
    let f = OfferFilter {
        gpu: Some("h100".into()),
        max_price: Some(Usd::parse("2.5").unwrap()),
        ..OfferFilter::default()
    };
    let got = m.cheapest(&f, 5);
    let mut want: Vec<&Offer> = all
        .iter()
        .filter(|o| f.matches(o) && o.available > 0)
        .collect();
    want.sort_by(|a, b| Sort::Price.compare(a, b));
    let want: Vec<&str> = want.iter().take(5).map(|o| o.id.as_str()).collect();
    let got_ids: Vec<&str> = got.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(got_ids, want);
    assert_eq!(got.len(), 5);
    assert!(got
        .iter()
        .all(|o| o.gpu.starts_with("H100") && o.available > 0));
    assert!(m.cheapest(&f, 0).is_empty());
}

#[test]
fn replace_drop_get_and_counts() {
    let (m, _) = market();
    assert_eq!(m.len(), 2100);
    assert_eq!(m.count_by_provider().get("vast"), Some(&700));
    let few = gen_offers("vast", 3, 99);
    m.replace_provider("vast", few.clone());
    assert_eq!(m.count_by_provider().get("vast"), Some(&3));
    assert_eq!(m.len(), 1403);
    assert_eq!(m.get("vast:00001"), Some(few[1].clone()));
    assert_eq!(m.get("vast:00500"), None);
    assert!(m.get("runpod:00500").is_some());
    let clone = m.clone();
    clone.drop_provider("runpod");
    assert_eq!(m.len(), 703);
    assert!(!m.count_by_provider().contains_key("runpod"));
    assert_eq!(m.provider_updated_at("vast"), Some(1000));
    assert_eq!(m.provider_updated_at("runpod"), None);
}
