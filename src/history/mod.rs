//! Price history (SPEC section 7): what each offer refresh saw, rolled up per hour, and
//! the queries of `GET /v1/gpus/prices`.
//!
//! At every successful refresh of a provider, [`record`] groups its offers by
//! normalized GPU model and interruptible flag and writes one row per group for the
//! refresh's hour (UTC), in the same write transaction as the offers themselves. A row
//! already there for that hour is merged ([`merge`]): min of the mins, max of the maxes,
//! and the latest refresh's median, offer count and available machines (the hour's
//! closing state). So a row is bounded (about 20 bytes) whatever the refresh rate, and
//! the number of rows is hours x providers x GPU models x 2.
//!
//! Reads ([`query`]) aggregate rows on the fly: without `provider` the providers of an
//! hour become one row (`provider: null`), and `1d` folds a UTC day's hours. Aggregated
//! min and max are exact; the aggregated median is the offer-weighted median of the rows'
//! medians (the rows keep no price lists); offers and available are summed over the
//! providers of an hour and, for a day, the day's largest hourly figure.

mod query;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::clock::Millis;
use crate::model::{Offer, PriceRollup};
use crate::money::Usd;
use crate::store::{HistoryKey, StoreError, Tx};

pub(crate) use query::{parse_query, query, PriceRow};

pub(crate) const HOUR_MS: Millis = 3_600_000;
pub(crate) const DAY_MS: Millis = 24 * HOUR_MS;

/// The start of the hour (UTC) that `t` falls in.
pub(crate) fn hour_of(t: Millis) -> Millis {
    t - t.rem_euclid(HOUR_MS)
}

/// The median of sorted prices: the middle one, or the two middle ones' mean rounded
/// half up to the micro-dollar. `None` for no prices.
fn median(sorted: &[Usd]) -> Option<Usd> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    if !n.is_multiple_of(2) {
        return Some(sorted[n / 2]);
    }
    let (a, b) = (i128::from(sorted[n / 2 - 1].0), i128::from(sorted[n / 2].0));
    Some(Usd(((a + b + 1).div_euclid(2)) as i64))
}

/// One refresh of one provider as rows: per (GPU model, interruptible), the min, median
/// and max price per GPU-hour, the offers and the machines available.
pub(crate) fn rollups(offers: &[Offer], now: Millis) -> BTreeMap<(String, bool), PriceRollup> {
    let mut groups: BTreeMap<(String, bool), (Vec<Usd>, u32)> = BTreeMap::new();
    for o in offers {
        let g = groups
            .entry((o.gpu.clone(), o.interruptible))
            .or_insert_with(|| (Vec::new(), 0));
        g.0.push(o.price_per_gpu_hour());
        g.1 = g.1.saturating_add(o.available);
    }
    groups
        .into_iter()
        .filter_map(|(k, (mut prices, available))| {
            prices.sort_unstable();
            let row = PriceRollup {
                min: *prices.first()?,
                median: median(&prices)?,
                max: *prices.last()?,
                offers: u32::try_from(prices.len()).unwrap_or(u32::MAX),
                available,
                refreshes: 1,
                updated_at: now,
            };
            Some((k, row))
        })
        .collect()
}

/// A refresh's row merged into the row its hour already has.
pub(crate) fn merge(old: Option<PriceRollup>, fresh: PriceRollup) -> PriceRollup {
    match old {
        None => fresh,
        Some(o) => PriceRollup {
            min: o.min.min(fresh.min),
            max: o.max.max(fresh.max),
            median: fresh.median,
            offers: fresh.offers,
            available: fresh.available,
            refreshes: o.refreshes.saturating_add(1),
            updated_at: fresh.updated_at.max(o.updated_at),
        },
    }
}

/// Records `provider`'s refresh at `now` (inside the transaction that stores its
/// offers): one merged row per GPU model and flag for the hour of `now`.
pub(crate) fn record(
    tx: &Tx<'_>,
    provider: &str,
    offers: &[Offer],
    now: Millis,
) -> Result<(), StoreError> {
    let hour = hour_of(now);
    for ((gpu, interruptible), fresh) in rollups(offers, now) {
        let key = HistoryKey {
            gpu,
            hour,
            provider: provider.to_string(),
            interruptible,
        };
        let row = merge(tx.price_row(&key)?, fresh);
        tx.put_price_row(&key, &row)?;
    }
    Ok(())
}
