//! `GET /v1/gpus/prices`: parsing its parameters, reading pages of history oldest
//! first, and the cursor that says where the next page starts.
//!
//! A page reads, for each GPU model that matches `gpu`, that model's hours from `since`
//! on (one range of its keys) until it has `limit + 1` output rows, then merges the
//! models' rows by (start, gpu, provider, interruptible). Cost: O(limit x rows per
//! output row x matching models), where an output row is one row (one provider, 1h),
//! one per provider of the hour (all providers), or 24 times that (1d); memory is the
//! page. A cursor is the last row's sort key, hex-encoded with a tag over the filter, so
//! a cursor from another query is refused.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use ring::digest;

use super::{DAY_MS, HOUR_MS};
use crate::clock::{parse_rfc3339, Millis};
use crate::error::{Error, Result};
use crate::market::gpu_matches;
use crate::model::PriceRollup;
use crate::money::Usd;
use crate::store::{Store, StoreError};

const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// The longest relative time accepted (`3650d`).
const MAX_AGO_MS: i64 = 3650 * DAY_MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interval {
    Hour,
    Day,
}

impl Interval {
    fn ms(self) -> Millis {
        match self {
            Interval::Hour => HOUR_MS,
            Interval::Day => DAY_MS,
        }
    }

    /// The start of the interval `t` falls in (UTC hours and days).
    pub(crate) fn floor(self, t: Millis) -> Millis {
        t - t.rem_euclid(self.ms())
    }

    fn as_str(self) -> &'static str {
        match self {
            Interval::Hour => "1h",
            Interval::Day => "1d",
        }
    }
}

/// Where a page starts: strictly after this row's sort key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    start: Millis,
    gpu: String,
    /// Empty for a row over every provider.
    provider: String,
    interruptible: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PriceQuery {
    pub gpu: Option<String>,
    pub provider: Option<String>,
    pub interruptible: Option<bool>,
    pub interval: Interval,
    pub since: Millis,
    pub until: Millis,
    pub limit: usize,
    after: Option<RowKey>,
}

/// One row of the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PriceRow {
    pub gpu: String,
    /// `None`: every provider of the interval.
    pub provider: Option<String>,
    pub interruptible: bool,
    pub start: Millis,
    pub min: Usd,
    pub median: Usd,
    pub max: Usd,
    pub offers: u64,
    pub available: u64,
}

impl PriceRow {
    fn key(&self) -> RowKey {
        RowKey {
            start: self.start,
            gpu: self.gpu.clone(),
            provider: self.provider.clone().unwrap_or_default(),
            interruptible: self.interruptible,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PricePage {
    pub data: Vec<PriceRow>,
    pub next_cursor: Option<String>,
}

/// `since` / `until`: RFC 3339 (`2026-12-01T00:00:00Z`), or a time before `now` as a
/// whole number of minutes, hours or days (`90m`, `24h`, `7d`).
pub(crate) fn parse_time(param: &str, v: &str, now: Millis) -> Result<Millis> {
    let bad = || {
        Error::invalid_param(
            param,
            format!("{param} must be an RFC 3339 time (2026-12-01T00:00:00Z) or a time ago like 90m, 24h or 7d; got '{v}'"),
        )
    };
    let unit = match v.as_bytes().last() {
        Some(b'm') => Some(60_000),
        Some(b'h') => Some(HOUR_MS),
        Some(b'd') => Some(DAY_MS),
        _ => None,
    };
    if let Some(unit) = unit {
        let digits = &v[..v.len() - 1];
        if !digits.is_empty() && digits.len() <= 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = digits.parse().map_err(|_| bad())?;
            let ago = n
                .checked_mul(unit)
                .filter(|a| *a <= MAX_AGO_MS)
                .ok_or_else(bad)?;
            return Ok(now - ago);
        }
    }
    parse_rfc3339(v).ok_or_else(bad)
}

fn filter_tag(q: &PriceQuery, body: &[u8]) -> [u8; 8] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let canon = format!(
        "{}\n{}\n{:?}\n{}\n",
        q.gpu.as_deref().unwrap_or("").to_ascii_lowercase(),
        q.provider.as_deref().unwrap_or(""),
        q.interruptible,
        q.interval.as_str()
    );
    ctx.update(canon.as_bytes());
    ctx.update(body);
    let mut out = [0u8; 8];
    out.copy_from_slice(&ctx.finish().as_ref()[..8]);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2048 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encode_cursor(q: &PriceQuery, k: &RowKey) -> String {
    let body = format!(
        "{}\n{}\n{}\n{}",
        k.start,
        k.gpu,
        k.provider,
        u8::from(k.interruptible)
    );
    let mut bytes = body.into_bytes();
    let tag = filter_tag(q, &bytes);
    bytes.extend_from_slice(&tag);
    hex(&bytes)
}

fn decode_cursor(q: &PriceQuery, token: &str) -> Result<RowKey> {
    let bad = || Error::invalid_param("cursor", "cursor must be a next_cursor of this same query");
    let bytes = unhex(token).ok_or_else(bad)?;
    if bytes.len() < 8 {
        return Err(bad());
    }
    let (body, tag) = bytes.split_at(bytes.len() - 8);
    if filter_tag(q, body) != tag {
        return Err(bad());
    }
    let text = std::str::from_utf8(body).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split('\n').collect();
    match parts.as_slice() {
        [start, gpu, provider, flag] => Ok(RowKey {
            start: start.parse().map_err(|_| bad())?,
            gpu: gpu.to_string(),
            provider: provider.to_string(),
            interruptible: *flag == "1",
        }),
        _ => Err(bad()),
    }
}

/// The query from `GET /v1/gpus/prices` pairs. `since` defaults to 24 h (1h) or 30 days
/// (1d) before `until`, which defaults to `now`.
pub(crate) fn parse_query(pairs: &[(String, String)], now: Millis) -> Result<PriceQuery> {
    let mut q = PriceQuery {
        gpu: None,
        provider: None,
        interruptible: None,
        interval: Interval::Hour,
        since: 0,
        until: now,
        limit: DEFAULT_LIMIT,
        after: None,
    };
    let (mut since, mut cursor) = (None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "gpu" => q.gpu = Some(v.clone()),
            "provider" => q.provider = Some(v.clone()),
            "interruptible" => {
                q.interruptible = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Error::invalid_param(
                            "interruptible",
                            format!("interruptible must be true or false; got '{v}'"),
                        ))
                    }
                })
            }
            "interval" => {
                q.interval = match v.as_str() {
                    "1h" => Interval::Hour,
                    "1d" => Interval::Day,
                    _ => {
                        return Err(Error::invalid_param(
                            "interval",
                            format!("interval must be 1h or 1d; got '{v}'"),
                        ))
                    }
                }
            }
            "since" => since = Some(parse_time("since", v, now)?),
            "until" => q.until = parse_time("until", v, now)?,
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Error::invalid_param(
                            "limit",
                            format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "cursor" => cursor = Some(v.clone()),
            other => {
                return Err(Error::invalid_param(
                    other,
                    format!("unknown query parameter '{other}'"),
                ))
            }
        }
    }
    let default_span = match q.interval {
        Interval::Hour => DAY_MS,
        Interval::Day => 30 * DAY_MS,
    };
    q.since = since.unwrap_or(q.until - default_span);
    if q.since >= q.until {
        return Err(Error::invalid_param("since", "since must be before until"));
    }
    if let Some(c) = cursor {
        q.after = Some(decode_cursor(&q, &c)?);
    }
    Ok(q)
}

/// One output row being folded from stored rows: per-hour sums of offers and
/// machines (over providers), the largest of those over the interval's hours.
struct Acc {
    min: Usd,
    max: Usd,
    /// (median, offers) of every row folded in, for the weighted median.
    medians: Vec<(Usd, u32)>,
    hour: Millis,
    hour_offers: u64,
    hour_available: u64,
    offers: u64,
    available: u64,
}

impl Acc {
    fn new(hour: Millis) -> Acc {
        Acc {
            min: Usd(i64::MAX),
            max: Usd(i64::MIN),
            medians: Vec::new(),
            hour,
            hour_offers: 0,
            hour_available: 0,
            offers: 0,
            available: 0,
        }
    }

    fn close_hour(&mut self) {
        self.offers = self.offers.max(self.hour_offers);
        self.available = self.available.max(self.hour_available);
        self.hour_offers = 0;
        self.hour_available = 0;
    }

    fn add(&mut self, hour: Millis, r: &PriceRollup) {
        if hour != self.hour {
            self.close_hour();
            self.hour = hour;
        }
        self.hour_offers += u64::from(r.offers);
        self.hour_available += u64::from(r.available);
        self.min = self.min.min(r.min);
        self.max = self.max.max(r.max);
        self.medians.push((r.median, r.offers));
    }

    /// (min, weighted median, max, offers, available).
    fn finish(mut self) -> (Usd, Usd, Usd, u64, u64) {
        self.close_hour();
        self.medians.sort_unstable();
        let total: u64 = self.medians.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut seen = 0u64;
        let mut median = self.medians.last().map(|(m, _)| *m).unwrap_or(self.min);
        for (m, w) in &self.medians {
            seen += u64::from(*w);
            if seen * 2 >= total {
                median = *m;
                break;
            }
        }
        (self.min, median, self.max, self.offers, self.available)
    }
}

/// Up to `q.limit + 1` output rows of one GPU model after the cursor, oldest first.
fn gpu_rows(rx: &crate::store::Rx, gpu: &str, q: &PriceQuery) -> Result<Vec<PriceRow>, StoreError> {
    let mut from = q.interval.floor(q.since);
    if let Some(a) = &q.after {
        from = from.max(a.start);
    }
    let mut out: Vec<PriceRow> = Vec::new();
    let mut current: Option<Millis> = None;
    let mut accs: BTreeMap<(String, bool), Acc> = BTreeMap::new();
    let flush =
        |start: Millis, accs: &mut BTreeMap<(String, bool), Acc>, out: &mut Vec<PriceRow>| {
            for ((provider, interruptible), acc) in std::mem::take(accs) {
                let (min, median, max, offers, available) = acc.finish();
                let row = PriceRow {
                    gpu: gpu.to_string(),
                    provider: q.provider.as_ref().map(|_| provider),
                    interruptible,
                    start,
                    min,
                    median,
                    max,
                    offers,
                    available,
                };
                if q.after.as_ref().is_none_or(|a| row.key() > *a) {
                    out.push(row);
                }
            }
        };
    let mut complete = true;
    rx.history_range(gpu, from, q.until, |key, row| {
        if q.provider.as_ref().is_some_and(|p| *p != key.provider)
            || q.interruptible.is_some_and(|f| f != key.interruptible)
        {
            return ControlFlow::Continue(());
        }
        let start = q.interval.floor(key.hour);
        if current != Some(start) {
            if let Some(s) = current {
                flush(s, &mut accs, &mut out);
                if out.len() > q.limit {
                    complete = false;
                    return ControlFlow::Break(());
                }
            }
            current = Some(start);
        }
        let provider = if q.provider.is_some() {
            key.provider
        } else {
            String::new()
        };
        accs.entry((provider, key.interruptible))
            .or_insert_with(|| Acc::new(key.hour))
            .add(key.hour, &row);
        ControlFlow::Continue(())
    })?;
    if complete {
        if let Some(s) = current {
            flush(s, &mut accs, &mut out);
        }
    }
    Ok(out)
}

/// One page of price history.
pub(crate) async fn query(store: &Store, q: PriceQuery) -> Result<PricePage> {
    let q2 = q.clone();
    let mut rows: Vec<PriceRow> = store
        .read(move |rx| {
            let mut all = Vec::new();
            for gpu in rx.history_gpus()? {
                if q2.gpu.as_deref().is_some_and(|f| !gpu_matches(f, &gpu)) {
                    continue;
                }
                all.extend(gpu_rows(rx, &gpu, &q2)?);
            }
            Ok::<_, StoreError>(all)
        })
        .await?;
    rows.sort_by_key(PriceRow::key);
    let next_cursor = if rows.len() > q.limit {
        rows.truncate(q.limit);
        rows.last().map(|r| encode_cursor(&q, &r.key()))
    } else {
        None
    };
    Ok(PricePage {
        data: rows,
        next_cursor,
    })
}
