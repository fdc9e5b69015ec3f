//! The sandbox clouds' offer catalogues and their spot price drift.
//!
//! Catalogues are the JSON files under `fixtures/sandbox/`, compiled into the binary so
//! a static `spotd` needs no fixtures directory at run time (`generate.py` writes them:
//! an interruptible offer's on-demand price is its spot price over 1 - d, d uniform in
//! 60-80 %, the seed's "typically 60-80 % cheaper than on demand"). Each `GET offers` is
//! one "refresh": it advances the cloud's drift epoch and moves every interruptible
//! offer's spot price by a seeded step of at most `price_drift` (relative) plus a pull of
//! 1/20 of the way back to the fixture price (spot markets revert: without it the walk
//! spreads until it hits the band and the market's discount wanders off the seed's),
//! computed in integer micro-USD and kept within [0.5x, 2x] of the fixture price and
//! never above the offer's on-demand price. On-demand prices never move.
//! The epoch lives in memory: a restarted sandbox starts again from the fixture prices,
//! as a market that was closed would reopen near its list prices.

use serde::Deserialize;

use crate::money::Usd;
use crate::providers::protocol::ProviderOffer;

use super::sim::{mix, Rng};

/// (cloud name, catalogue JSON), in the order `GET /` lists them.
const FIXTURES: &[(&str, &str)] = &[
    ("nimbus", include_str!("../../fixtures/sandbox/nimbus.json")),
    ("strato", include_str!("../../fixtures/sandbox/strato.json")),
    (
        "cumulus",
        include_str!("../../fixtures/sandbox/cumulus.json"),
    ),
];

#[derive(Deserialize)]
struct FixtureFile {
    cloud: String,
    offers: Vec<ProviderOffer>,
}

/// The names of the built-in clouds.
pub fn cloud_names() -> Vec<String> {
    FIXTURES.iter().map(|(n, _)| (*n).to_string()).collect()
}

/// One cloud's catalogue: the fixture offers and the current drifted spot prices.
#[derive(Debug)]
pub struct Catalogue {
    pub name: String,
    /// As in the fixture; `available` is the cloud's machine count for that offer.
    pub offers: Vec<ProviderOffer>,
    /// Current spot price of each offer (same index as `offers`).
    prices: Vec<Usd>,
    /// Number of refreshes served so far.
    epoch: u64,
}

impl Catalogue {
    pub fn offer(&self, id: &str) -> Option<&ProviderOffer> {
        self.offers.iter().find(|o| o.id == id)
    }

    /// One refresh: moves the spot prices a step and returns them, in offer order.
    pub fn refresh(&mut self, seed: u64, drift_ppm: i64) -> Vec<Usd> {
        self.epoch += 1;
        for (i, o) in self.offers.iter().enumerate() {
            if !o.interruptible {
                continue;
            }
            let key = mix(&[seed, str_key(&self.name), str_key(&o.id), self.epoch]);
            self.prices[i] = drift_step(
                self.prices[i],
                o.price_per_hour,
                o.on_demand_price_per_hour,
                key,
                drift_ppm,
            );
        }
        self.prices.clone()
    }
}

/// Loads every built-in catalogue. Fails only if a fixture compiled into the binary is
/// malformed, which the tests catch.
pub fn load() -> Result<Vec<Catalogue>, String> {
    FIXTURES
        .iter()
        .map(|(name, text)| {
            let f: FixtureFile = serde_json::from_str(text)
                .map_err(|e| format!("sandbox fixture {name}.json: {e}"))?;
            if f.cloud != *name {
                return Err(format!(
                    "sandbox fixture {name}.json names cloud {}",
                    f.cloud
                ));
            }
            let prices = f.offers.iter().map(|o| o.price_per_hour).collect();
            Ok(Catalogue {
                name: f.cloud,
                offers: f.offers,
                prices,
                epoch: 0,
            })
        })
        .collect()
}

/// `price_drift` (relative, e.g. 0.02) as parts per million, the one float-to-integer
/// conversion on the price path. Negative or non-finite drift means no drift.
pub fn drift_ppm(price_drift: f64) -> i64 {
    if !price_drift.is_finite() || price_drift <= 0.0 {
        return 0;
    }
    (price_drift.min(1.0) * 1_000_000.0).round() as i64
}

/// How a cloud quotes a drifted price: to the hundredth of a cent, half up. A price at
/// most a cap exact to the hundredth of a cent (the fixtures' on-demand prices are
/// exact to the tenth) stays at most that cap.
pub fn quoted(p: Usd) -> Usd {
    Usd((p.micros() + 50) / 100 * 100)
}

/// One drift step: `current * (1 + r)` with `r` uniform in [-drift, +drift] drawn from
/// `key`, plus 1/20 of the way back to `base`, rounded to the micro-dollar and clamped
/// to [base / 2, base * 2] and to at most `cap` (the on-demand price) when there is one.
pub fn drift_step(current: Usd, base: Usd, cap: Option<Usd>, key: u64, drift_ppm: i64) -> Usd {
    if drift_ppm <= 0 {
        return current;
    }
    let span = (2 * drift_ppm + 1) as u64;
    let r = (Rng::new(key).next_u64() % span) as i64 - drift_ppm;
    let cur = i128::from(current.micros());
    let delta = cur * i128::from(r);
    // Round half away from zero to the micro-dollar.
    let step = if delta >= 0 {
        (delta + 500_000) / 1_000_000
    } else {
        (delta - 500_000) / 1_000_000
    };
    let pull = (i128::from(base.micros()) - cur) / 20;
    let lo = i128::from(base.micros()) / 2;
    let mut hi = i128::from(base.micros()) * 2;
    if let Some(c) = cap {
        hi = hi.min(i128::from(c.micros()));
    }
    Usd((cur + step + pull).clamp(lo.min(hi), hi) as i64)
}

/// A stable 64-bit key for a string (FNV-1a): std's hasher is not guaranteed stable
/// across Rust releases, and drift must replay identically for a seed.
pub fn str_key(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_realistic() {
        let cats = load().unwrap();
        let total: usize = cats.iter().map(|c| c.offers.len()).sum();
        assert!(total >= 500, "{total} offers");
        for c in &cats {
            let mut ids = std::collections::HashSet::new();
            for o in &c.offers {
                assert!(ids.insert(o.id.clone()), "duplicate id {}", o.id);
                assert!((1..=8).contains(&o.gpu_count), "{}", o.id);
                assert!((1..=6).contains(&o.available), "{}", o.id);
                assert!((0.8..=0.999).contains(&o.reliability), "{}", o.id);
                assert!(o.price_per_hour > Usd::ZERO, "{}", o.id);
                // Prices are exact to the tenth of a cent.
                assert_eq!(o.price_per_hour.micros() % 1000, 0, "{}", o.id);
                let vram = match o.gpu.as_str() {
                    "H200" => 141,
                    "H100 SXM" | "H100 PCIe" | "A100 SXM 80GB" | "A100 80GB" => 80,
                    "A100 40GB" => 40,
                    "L40S" | "RTX 6000 Ada" | "RTX A6000" => 48,
                    "RTX 4090" | "RTX 3090" | "A10" | "L4" => 24,
                    "T4" => 16,
                    other => panic!("unexpected GPU {other}"),
                };
                assert_eq!(o.vram_gb, vram, "{}", o.id);
                if let Some(od) = o.on_demand_price_per_hour {
                    assert!(od >= o.price_per_hour, "{}", o.id);
                    // Exact to the tenth of a cent, so a quote (to the hundredth) at most
                    // the cap stays at most the cap.
                    assert_eq!(od.micros() % 1000, 0, "{}", o.id);
                }
            }
        }
    }

    /// Spot prices as the clouds quote them after `refreshes` drift steps of `drift`.
    fn market_after(refreshes: u64, drift: f64) -> Vec<(ProviderOffer, Usd)> {
        let mut out = Vec::new();
        for mut c in load().unwrap() {
            let mut prices = Vec::new();
            for _ in 0..refreshes {
                prices = c.refresh(42, drift_ppm(drift));
            }
            out.extend(c.offers.iter().cloned().zip(prices.into_iter().map(quoted)));
        }
        out
    }

    /// The median of (1 - spot / on demand) over interruptible offers with an
    /// on-demand price, in parts per thousand (integer money, no floats).
    fn median_discount_permille(m: &[(ProviderOffer, Usd)]) -> i64 {
        let mut d: Vec<i64> = m
            .iter()
            .filter(|(o, _)| o.interruptible)
            .filter_map(|(o, p)| {
                let od = o.on_demand_price_per_hour?.micros();
                Some(1000 - p.micros() * 1000 / od)
            })
            .collect();
        d.sort_unstable();
        d[d.len() / 2]
    }

    /// The seed: spot is "typically 60-80 % cheaper than on-demand", and a spot price
    /// never drifts above its offer's on-demand price, over the whole generated market
    /// and many refreshes (a day of 30 s refreshes), at the default drift and at a wild one.
    #[test]
    fn spot_stays_below_on_demand_and_the_discount_follows_the_seed() {
        let fixture = market_after(1, 0.0);
        assert_eq!(fixture.len(), 580);
        let d0 = median_discount_permille(&fixture);
        assert!((600..=800).contains(&d0), "fixture median discount {d0}‰");
        for drift in [0.02, 0.3] {
            let m = market_after(2880, drift);
            for (o, p) in &m {
                if let Some(od) = o.on_demand_price_per_hour {
                    assert!(
                        *p <= od,
                        "{} drifted to {p} above on demand {od} (drift {drift})",
                        o.id
                    );
                }
                assert!(*p > Usd::ZERO, "{}", o.id);
            }
            let d = median_discount_permille(&m);
            assert!(
                (600..=800).contains(&d),
                "median discount {d}‰ after a day at drift {drift}"
            );
        }
    }

    #[test]
    fn drift_is_bounded_and_deterministic() {
        let base = Usd(2_000_000);
        let mut p = base;
        for epoch in 0..10_000u64 {
            let next = drift_step(p, base, None, mix(&[42, epoch]), 20_000);
            // One step moves at most 2% (plus rounding) and the pull back to the base
            // (1/20 of the gap), and never past the band.
            let pull = (base.micros() - p.micros()).abs() / 20;
            assert!((next.micros() - p.micros()).abs() <= p.micros() / 50 + pull + 1);
            assert!(next >= Usd(1_000_000) && next <= Usd(4_000_000));
            p = next;
        }
        assert_eq!(
            drift_step(base, base, None, 7, 20_000),
            drift_step(base, base, None, 7, 20_000)
        );
        assert_eq!(drift_step(base, base, None, 7, 0), base);
        // A cap below the band's top is the top.
        for k in 0..1000u64 {
            assert!(drift_step(base, base, Some(Usd(2_010_000)), k, 500_000) <= Usd(2_010_000));
        }
        assert_eq!(drift_ppm(0.02), 20_000);
        assert_eq!(drift_ppm(f64::NAN), 0);
        assert_eq!(drift_ppm(-1.0), 0);
    }
}
