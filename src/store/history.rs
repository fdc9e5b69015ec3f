//! The price history table (`tables::PRICE_HISTORY`, schema 5): hourly rows keyed by
//! (gpu, hour start, provider, interruptible). The merge rules live in `crate::history`;
//! this file only reads and writes rows. Every read is a range of one GPU's keys, so it
//! costs what it returns (times the providers and flags interleaved in those hours).

use std::ops::ControlFlow;

use redb::ReadableTable;

use super::tables::PRICE_HISTORY;
use super::{codec, Rx, StoreError, Tx};
use crate::clock::Millis;
use crate::model::PriceRollup;

/// One row's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HistoryKey {
    pub gpu: String,
    pub hour: Millis,
    pub provider: String,
    pub interruptible: bool,
}

/// Above every provider name (`ProviderConfig::NAME_RULE` is ASCII).
const PROVIDER_MAX: &str = "\u{10FFFF}";

/// Where a retention sweep goes on: the GPU whose old rows come next (`None`: done).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HistorySweep {
    pub(crate) gpu: Option<String>,
}

impl HistorySweep {
    pub(crate) fn start() -> HistorySweep {
        HistorySweep {
            gpu: Some(String::new()),
        }
    }
}

/// The first GPU name at or after `from` (`None`: the first of all), skipping `from`
/// itself when `after`: O(1) seeks, so listing the GPUs is O(GPUs), not O(rows).
fn gpu_at(
    t: &impl ReadableTable<(&'static str, i64, &'static str, bool), &'static [u8]>,
    from: &str,
    after: bool,
) -> Result<Option<String>, StoreError> {
    let mut range = if after {
        t.range((from, i64::MAX, PROVIDER_MAX, true)..)?
    } else {
        t.range((from, i64::MIN, "", false)..)?
    };
    for item in range.by_ref() {
        let (k, _) = item?;
        let gpu = k.value().0;
        if after && gpu == from {
            continue;
        }
        return Ok(Some(gpu.to_string()));
    }
    Ok(None)
}

impl Tx<'_> {
    /// The stored row at `key`, if any.
    pub(crate) fn price_row(&self, key: &HistoryKey) -> Result<Option<PriceRollup>, StoreError> {
        let t = self.txn.open_table(PRICE_HISTORY)?;
        let got = t.get((
            key.gpu.as_str(),
            key.hour,
            key.provider.as_str(),
            key.interruptible,
        ))?;
        got.map(|v| codec::decode(v.value())).transpose()
    }

    pub(crate) fn put_price_row(
        &self,
        key: &HistoryKey,
        row: &PriceRollup,
    ) -> Result<(), StoreError> {
        self.wrote.set(true);
        let bytes = codec::encode(row)?;
        self.txn.open_table(PRICE_HISTORY)?.insert(
            (
                key.gpu.as_str(),
                key.hour,
                key.provider.as_str(),
                key.interruptible,
            ),
            bytes.as_slice(),
        )?;
        Ok(())
    }

    /// Removes rows of hours before `cutoff`, at most `limit` per call, from the GPU
    /// `from` names on. Old rows are at the front of each GPU's range, so the sweep
    /// reads only what it removes plus one seek per GPU. Answers what it removed and
    /// where to go on.
    pub(crate) fn sweep_history(
        &self,
        cutoff: Millis,
        limit: usize,
        from: &HistorySweep,
    ) -> Result<(usize, HistorySweep), StoreError> {
        self.wrote.set(true);
        let mut t = self.txn.open_table(PRICE_HISTORY)?;
        let Some(start) = &from.gpu else {
            return Ok((0, HistorySweep::default()));
        };
        let mut gpu = gpu_at(&t, start, false)?;
        let mut removed = 0;
        while let Some(g) = gpu {
            let mut old: Vec<(i64, String, bool)> = Vec::new();
            for item in
                t.range((g.as_str(), i64::MIN, "", false)..(g.as_str(), cutoff, "", false))?
            {
                let (k, _) = item?;
                let (_, hour, provider, flag) = k.value();
                old.push((hour, provider.to_string(), flag));
                if removed + old.len() >= limit {
                    break;
                }
            }
            for (hour, provider, flag) in &old {
                t.remove((g.as_str(), *hour, provider.as_str(), *flag))?;
            }
            removed += old.len();
            if removed >= limit {
                // This GPU may have more: the next call starts on it again.
                return Ok((removed, HistorySweep { gpu: Some(g) }));
            }
            gpu = gpu_at(&t, &g, true)?;
        }
        Ok((removed, HistorySweep::default()))
    }
}

impl Rx {
    /// Every GPU model with history, in name order (one seek each).
    pub(crate) fn history_gpus(&self) -> Result<Vec<String>, StoreError> {
        let t = self.txn.open_table(PRICE_HISTORY)?;
        let mut out = Vec::new();
        let mut next = gpu_at(&t, "", false)?;
        while let Some(g) = next {
            next = gpu_at(&t, &g, true)?;
            out.push(g);
        }
        Ok(out)
    }

    /// `gpu`'s rows of hours in `[from, until)`, oldest first (then by provider and
    /// flag), to `visit` until it breaks.
    pub(crate) fn history_range(
        &self,
        gpu: &str,
        from: Millis,
        until: Millis,
        mut visit: impl FnMut(HistoryKey, PriceRollup) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        if from >= until {
            return Ok(());
        }
        let t = self.txn.open_table(PRICE_HISTORY)?;
        for item in t.range((gpu, from, "", false)..(gpu, until, "", false))? {
            let (k, v) = item?;
            let (g, hour, provider, interruptible) = k.value();
            let key = HistoryKey {
                gpu: g.to_string(),
                hour,
                provider: provider.to_string(),
                interruptible,
            };
            if visit(key, codec::decode(v.value())?).is_break() {
                break;
            }
        }
        Ok(())
    }
}
