//! The plumbing every provider adapter shares (`http`, Vast.ai, RunPod, Lambda): one
//! authenticated JSON call ([`RestApi`]), status-to-error mapping, exact money from
//! provider JSON numbers, path encoding.
//!
//! Provider answers are untrusted: nothing here panics on what a provider sent, and a
//! body that does not parse is `Unavailable` (the outcome of the call is unknown).

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::ProviderError;
use crate::http_client::{HttpClient, HttpError, HttpResponse};
use crate::money::{Usd, MICROS};

/// Upper bound on an hourly machine price: anything above is a provider bug, not an offer.
const MAX_PRICE_PER_HOUR: i64 = 100_000 * MICROS;

pub(crate) fn transport(e: HttpError) -> ProviderError {
    match e {
        HttpError::Timeout(d) => ProviderError::Unavailable(format!("timed out after {d:?}")),
        HttpError::Transport(m) => ProviderError::Unavailable(m),
        HttpError::Request(m) => ProviderError::Rejected(m),
    }
}

/// A short printable excerpt of an answer body for error messages (keys never appear
/// in answers we excerpt: they travel in request headers only).
pub(crate) fn excerpt(r: &HttpResponse) -> String {
    let t: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
    if t.trim().is_empty() {
        format!("HTTP {}", r.status.as_u16())
    } else {
        format!("HTTP {}: {}", r.status.as_u16(), t.trim())
    }
}

/// Maps a non-success answer onto the error taxonomy. `no_capacity` decides, from the
/// answer, whether it means "this offer has no machine left" (each provider says it
/// its own way).
pub(crate) fn status_error(
    r: &HttpResponse,
    no_capacity: impl Fn(&HttpResponse) -> bool,
) -> ProviderError {
    status_error_with(r, no_capacity, excerpt)
}

/// [`status_error`] quoting the answer with `excerpt`, for an API whose error bodies
/// say more in some field than the raw text does.
pub(crate) fn status_error_with(
    r: &HttpResponse,
    no_capacity: impl Fn(&HttpResponse) -> bool,
    excerpt: impl Fn(&HttpResponse) -> String,
) -> ProviderError {
    match r.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized(excerpt(r)),
        // Retry-After in seconds (what RunPod sends); Vast sends none, and the
        // HTTP-date form is not used by these providers, so it reads as "not said".
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            retry_after_secs: r
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok()),
        },
        _ if no_capacity(r) => ProviderError::NoCapacity,
        s if s.is_client_error() => ProviderError::Rejected(excerpt(r)),
        _ => ProviderError::Unavailable(excerpt(r)),
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(r: &HttpResponse) -> Result<T, ProviderError> {
    r.json::<T>().map_err(ProviderError::Unavailable)
}

/// One provider's API: its name, address, key and client. `Debug` never shows the key.
pub(crate) struct RestApi {
    pub(crate) name: String,
    /// Without a trailing slash.
    base_url: String,
    api_key: Option<String>,
    client: HttpClient,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl RestApi {
    /// `base_url` from the config, or the provider's real address.
    pub(crate) fn new(
        name: String,
        base_url: Option<&str>,
        default_base_url: &str,
        api_key: Option<String>,
        client: HttpClient,
    ) -> RestApi {
        RestApi::at(name, base_url.unwrap_or(default_base_url), api_key, client)
    }

    /// An API at `base_url` (a trailing slash is dropped).
    pub(crate) fn at(
        name: String,
        base_url: &str,
        api_key: Option<String>,
        client: HttpClient,
    ) -> RestApi {
        RestApi {
            name,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            client,
        }
    }

    /// `method base_url+path` with the key as a bearer token and `body` as JSON;
    /// transport failures are already mapped.
    pub(crate) async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, ProviderError> {
        self.send(method, path, body).await
    }

    /// [`RestApi::req`] with any serializable body.
    pub(crate) async fn send<T: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<HttpResponse, ProviderError> {
        let bytes = match body {
            Some(v) => {
                Some(serde_json::to_vec(v).map_err(|e| ProviderError::Rejected(e.to_string()))?)
            }
            None => None,
        };
        let url = format!("{}{path}", self.base_url);
        self.client
            .send(
                method,
                &url,
                self.api_key.as_deref(),
                &[("accept", "application/json")],
                bytes,
            )
            .await
            .map_err(transport)
    }
}

/// A USD/h figure from a provider JSON number (or numeric string), exact: the decimal
/// text is parsed, never an f64. Provider floats often carry more than six decimals
/// (`1.0020740740740741`); those are rounded *up* to the next micro-USD so spotd never
/// quotes less than the provider charges. Exponent forms, negatives and absurd values
/// are refused.
pub(crate) fn usd_per_hour(v: &Value) -> Option<Usd> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (kept, rest) = frac.split_at(frac.len().min(6));
    let base = Usd::parse(&format!("{int}.{kept}0")).ok()?;
    let up = if rest.bytes().any(|b| b != b'0') {
        Usd::from_micros(1)
    } else {
        Usd::ZERO
    };
    let p = base.checked_add(up)?;
    (p.micros() <= MAX_PRICE_PER_HOUR).then_some(p)
}

/// Whole US cents per hour (an integer, or a string of one) as exact USD.
pub(crate) fn usd_from_cents(v: &Value) -> Option<Usd> {
    let cents: i64 = match v {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if !(0..=MAX_PRICE_PER_HOUR / 10_000).contains(&cents) {
        return None;
    }
    Some(Usd::from_micros(cents * 10_000))
}

/// A non-money count or size from JSON (ints or floats like `24564.0`), floored;
/// `None` for anything negative or not a number.
pub(crate) fn num(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (f.is_finite() && f >= 0.0).then_some(f)
}

pub(crate) fn u32_of(v: &Value) -> u32 {
    num(v).map(|f| f.min(u32::MAX as f64) as u32).unwrap_or(0)
}

/// Megabytes (as Vast reports memory) to whole gigabytes, rounded to nearest: a
/// 24564 MB card is a 24 GB card, an 81559 MB card an 80 GB one.
pub(crate) fn mb_to_gb(v: &Value) -> u32 {
    num(v)
        .map(|mb| ((mb / 1024.0).round()).min(u32::MAX as f64) as u32)
        .unwrap_or(0)
}

/// A path segment with everything but unreserved characters percent-encoded, so an
/// odd id from a provider or a record cannot change the path.
pub(crate) fn seg(id: &str) -> String {
    let mut enc = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    enc
}

pub(crate) fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn prices_are_exact_and_round_up_past_micros() {
        assert_eq!(usd_per_hour(&n("0.2410")).unwrap().micros(), 241_000);
        assert_eq!(usd_per_hour(&n("1")).unwrap().micros(), 1_000_000);
        assert_eq!(
            usd_per_hour(&n("1.0020740740740741")).unwrap().micros(),
            1_002_075
        );
        assert_eq!(usd_per_hour(&n("0.1230000")).unwrap().micros(), 123_000);
        assert_eq!(usd_per_hour(&n("\"0.74\"")).unwrap().micros(), 740_000);
        assert_eq!(usd_per_hour(&n("1e-3")), None);
        assert_eq!(usd_per_hour(&n("-0.5")), None);
        assert_eq!(usd_per_hour(&n("null")), None);
        assert_eq!(usd_per_hour(&n("1000000")), None);
        assert_eq!(usd_from_cents(&n("249")).unwrap().micros(), 2_490_000);
        assert_eq!(usd_from_cents(&n("\"80\"")).unwrap().micros(), 800_000);
        assert_eq!(usd_from_cents(&n("2.5")), None);
        assert_eq!(usd_from_cents(&n("-1")), None);
    }

    #[test]
    fn sizes_and_segments() {
        assert_eq!(mb_to_gb(&n("24564")), 24);
        assert_eq!(mb_to_gb(&n("81559.0")), 80);
        assert_eq!(mb_to_gb(&n("\"x\"")), 0);
        assert_eq!(u32_of(&n("16.5")), 16);
        assert_eq!(u32_of(&n("-3")), 0);
        assert_eq!(seg("a b/../c"), "a%20b%2F..%2Fc");
    }
}
