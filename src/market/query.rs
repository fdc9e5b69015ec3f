//! What a caller asks of the market: filters, sort orders, page size, and the parsing
//! of `GET /v1/gpus/offers` query strings (SPEC section 3 "Offers") into them.
//!
//! `OfferFilter::matches` and `Sort::compare` are the reference semantics: the index in
//! `market::index` must return exactly what a linear scan with them would.

use std::cmp::Ordering;

use crate::error::Error;
use crate::model::Offer;
use crate::money::Usd;

use super::normalize::normalize_gpu;

pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 1000;

/// Which offers a query wants. `None` means "any".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OfferFilter {
    /// Model match, see [`gpu_matches`].
    pub gpu: Option<String>,
    /// Exactly this many GPUs in the machine.
    pub gpu_count: Option<u32>,
    pub min_gpu_count: Option<u32>,
    /// Per GPU.
    pub min_vram_gb: Option<u32>,
    /// Across the machine's GPUs (what a model needs).
    pub min_total_vram_gb: Option<u32>,
    /// Whole-machine spot price per hour, inclusive.
    pub max_price: Option<Usd>,
    /// Provider name, case-insensitive.
    pub provider: Option<String>,
    /// Region, see `region_matches`.
    pub region: Option<String>,
    pub interruptible: Option<bool>,
    /// Providers whose offers never match (internal: cold deployments skip the
    /// providers that cannot run a model server).
    pub exclude_providers: Vec<String>,
}

impl OfferFilter {
    /// Everything but the GPU model (the index narrows that one by itself).
    pub fn matches_except_gpu(&self, o: &Offer) -> bool {
        self.gpu_count.is_none_or(|n| o.gpu_count == n)
            && self.min_gpu_count.is_none_or(|n| o.gpu_count >= n)
            && self.min_vram_gb.is_none_or(|v| o.vram_gb >= v)
            && self
                .min_total_vram_gb
                .is_none_or(|v| o.total_vram_gb() >= v)
            && self.max_price.is_none_or(|p| o.price_per_hour <= p)
            && self
                .provider
                .as_deref()
                .is_none_or(|p| o.provider.eq_ignore_ascii_case(p.trim()))
            && self
                .region
                .as_deref()
                .is_none_or(|r| region_matches(r, &o.region))
            && self.interruptible.is_none_or(|i| o.interruptible == i)
            && !self
                .exclude_providers
                .iter()
                .any(|p| o.provider.eq_ignore_ascii_case(p))
    }

    /// The whole filter on one offer: the tests' oracle for what the index answers.
    #[cfg(test)]
    pub(crate) fn matches(&self, o: &Offer) -> bool {
        self.gpu.as_deref().is_none_or(|g| gpu_matches(g, &o.gpu)) && self.matches_except_gpu(o)
    }

    /// A stable text of the filter, for cursor checksums.
    pub(crate) fn canonical(&self) -> String {
        format!("{self:?}")
    }
}

/// The GPU filter rule: the filter, with case, spaces, `-` and `_` ignored, must equal
/// a run of whole words of the offer's model name, either as typed or once normalized
/// like a provider's spelling. So "h100" matches "H100 SXM" and "H100 PCIe",
/// "rtx4090" and "RTX 4090" match "RTX 4090", "a100 80gb" matches "A100 80GB", and
/// "a10" matches "A10" but not "A100 80GB", "l4" not "L40S".
pub fn gpu_matches(filter: &str, offer_gpu: &str) -> bool {
    let words: Vec<String> = offer_gpu
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let typed = compact(filter);
    if typed.is_empty() {
        return true;
    }
    let normalized = compact(&normalize_gpu(filter));
    for i in 0..words.len() {
        let mut run = String::new();
        for w in &words[i..] {
            run.push_str(w);
            if run == typed || run == normalized {
                return true;
            }
            if run.len() >= typed.len().max(normalized.len()) {
                break;
            }
        }
    }
    false
}

fn compact(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Region rule: case-insensitive equality, or a prefix ending at a `-` of the offer's
/// region, so "us" and "us-east" both match "us-east-1" but "us-e" does not.
pub(crate) fn region_matches(filter: &str, region: &str) -> bool {
    let f = filter.trim();
    if region.eq_ignore_ascii_case(f) {
        return true;
    }
    region.len() > f.len()
        && region.as_bytes()[f.len()] == b'-'
        && region
            .get(..f.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(f))
}

/// Result orders. Every order breaks ties by offer id, so it is total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sort {
    /// Whole-machine price, cheapest first.
    #[default]
    Price,
    /// Whole-machine price, most expensive first.
    PriceDesc,
    /// Price per GPU, cheapest first.
    PricePerGpu,
    /// Reliability, most reliable first.
    Reliability,
    /// Per-GPU memory, largest first.
    VramDesc,
}

impl Sort {
    pub(crate) const ALL: [Sort; 5] = [
        Sort::Price,
        Sort::PriceDesc,
        Sort::PricePerGpu,
        Sort::Reliability,
        Sort::VramDesc,
    ];

    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "price" => Sort::Price,
            "-price" => Sort::PriceDesc,
            "price_per_gpu" => Sort::PricePerGpu,
            "reliability" => Sort::Reliability,
            "-vram_gb" => Sort::VramDesc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Price => "price",
            Sort::PriceDesc => "-price",
            Sort::PricePerGpu => "price_per_gpu",
            Sort::Reliability => "reliability",
            Sort::VramDesc => "-vram_gb",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The primary key as one integer, ascending in this order (ties: offer id).
    pub fn key(self, o: &Offer) -> i64 {
        match self {
            Sort::Price => o.price_per_hour.micros(),
            // Bitwise not reverses the order without the overflow of negating i64::MIN.
            Sort::PriceDesc => !o.price_per_hour.micros(),
            Sort::PricePerGpu => o.price_per_gpu_hour().micros(),
            Sort::Reliability => !ordered_f64(o.reliability),
            Sort::VramDesc => !i64::from(o.vram_gb),
        }
    }

    /// The reference order: key, then id.
    pub fn compare(self, a: &Offer, b: &Offer) -> Ordering {
        self.key(a).cmp(&self.key(b)).then_with(|| a.id.cmp(&b.id))
    }
}

/// Maps an f64 to an i64 with the same total order (`f64::total_cmp`).
fn ordered_f64(f: f64) -> i64 {
    let b = f.to_bits() as i64;
    if b < 0 {
        b ^ i64::MAX
    } else {
        b
    }
}

/// One page request.
#[derive(Clone, Debug, PartialEq)]
pub struct OfferQuery {
    pub filter: OfferFilter,
    pub sort: Sort,
    pub limit: usize,
    /// Opaque, from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Default for OfferQuery {
    fn default() -> Self {
        OfferQuery {
            filter: OfferFilter::default(),
            sort: Sort::default(),
            limit: DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

const PARAMS: &str = "gpu, gpu_count, min_gpu_count, min_vram_gb, max_price, provider, region, interruptible, sort, limit, cursor";

impl OfferQuery {
    /// Parses the query string of `GET /v1/gpus/offers` (without the `?`). `+` and
    /// `%20` decode to a space. A parameter given with an empty value counts as not
    /// given (what HTML forms send); one given twice, unknown, or with a bad value is
    /// `Invalid`, naming it.
    pub fn from_query_string(qs: &str) -> Result<OfferQuery, Error> {
        let mut q = OfferQuery::default();
        let mut seen: Vec<String> = Vec::new();
        for pair in qs.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name =
                percent_decode(k).map_err(|m| Error::invalid(format!("query string: {m}")))?;
            let value = percent_decode(v).map_err(|m| Error::invalid_param(&name, m))?;
            if seen.contains(&name) {
                return Err(Error::invalid_param(
                    &name,
                    format!("query parameter '{name}' is given more than once"),
                ));
            }
            seen.push(name.clone());
            let value = value.trim();
            let known = PARAMS.split(", ").any(|p| p == name);
            if !known {
                return Err(Error::invalid_param(
                    &name,
                    format!("unknown query parameter '{name}'; known: {PARAMS}"),
                ));
            }
            if value.is_empty() {
                continue;
            }
            let f = &mut q.filter;
            match name.as_str() {
                "gpu" => f.gpu = Some(value.to_string()),
                "gpu_count" => f.gpu_count = Some(count(&name, value)?),
                "min_gpu_count" => f.min_gpu_count = Some(count(&name, value)?),
                "min_vram_gb" => f.min_vram_gb = Some(uint(&name, value)?),
                "max_price" => {
                    let p = Usd::parse(value).map_err(|_| {
                        Error::invalid_param(
                            &name,
                            format!("max_price must be a USD amount per hour like 2.5 (at most 6 decimals), got '{value}'"),
                        )
                    })?;
                    if p.is_negative() {
                        return Err(Error::invalid_param(&name, "max_price must not be negative"));
                    }
                    f.max_price = Some(p);
                }
                "provider" => f.provider = Some(value.to_string()),
                "region" => f.region = Some(value.to_string()),
                "interruptible" => {
                    f.interruptible = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(Error::invalid_param(
                                &name,
                                format!("interruptible must be true or false, got '{value}'"),
                            ))
                        }
                    })
                }
                "sort" => {
                    q.sort = Sort::parse(value).ok_or_else(|| {
                        Error::invalid_param(
                            &name,
                            format!("sort must be one of price, -price, price_per_gpu, reliability, -vram_gb; got '{value}'"),
                        )
                    })?
                }
                "limit" => {
                    let n: usize = value.parse().map_err(|_| limit_err(value))?;
                    if !(1..=MAX_LIMIT).contains(&n) {
                        return Err(limit_err(value));
                    }
                    q.limit = n;
                }
                // Only `cursor` is left: PARAMS was checked above.
                _ => q.cursor = Some(value.to_string()),
            }
        }
        Ok(q)
    }
}

fn limit_err(value: &str) -> Error {
    Error::invalid_param(
        "limit",
        format!("limit must be a whole number from 1 to {MAX_LIMIT}, got '{value}'"),
    )
}

fn uint(name: &str, value: &str) -> Result<u32, Error> {
    value.parse::<u32>().map_err(|_| {
        Error::invalid_param(
            name,
            format!(
                "{name} must be a whole number from 0 to {}, got '{value}'",
                u32::MAX
            ),
        )
    })
}

fn count(name: &str, value: &str) -> Result<u32, Error> {
    match uint(name, value)? {
        0 => Err(Error::invalid_param(
            name,
            format!("{name} must be at least 1, got '{value}'"),
        )),
        n => Ok(n),
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte, and the
/// result must be UTF-8.
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("'{s}' has a bad percent escape"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' does not decode to UTF-8"))
}
