//! Process-wide counters for `GET /metrics`, and the Prometheus text writer.
//!
//! Counters live in one `static` so that code far from the API (provider adapters,
//! workers, the inference router) can count without being handed a handle: call
//! [`observe_http`], [`provider_error`], [`cold_start`], [`reap`] or
//! [`webhook_attempt`]. Gauges that are
//! facts about the market, rentals and ledger are not kept here: `api::metrics` reads
//! them at scrape time. The exposition is written by hand (the format is a few lines
//! of text), so no metrics crate is needed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::providers::{CreateInstance, Instance, Provider, ProviderError, ProviderOffer};

/// Upper bounds of the request latency histogram, in seconds. Long buckets exist
/// because inference requests may legitimately wait for a model (`Prefer: wait=N`).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the +Inf bucket is `count`.
    buckets: Vec<u64>,
    count: u64,
    sum_micros: u64,
}

/// (method, route template, status)
type HttpKey = (String, &'static str, u16);

pub struct Metrics {
    http: Mutex<BTreeMap<HttpKey, Histogram>>,
    /// (provider, operation, error kind) -> count
    provider_errors: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    cold_starts: AtomicU64,
    reaps: AtomicU64,
    log_write_errors: AtomicU64,
    /// Webhook attempts that delivered, will be retried, or gave up.
    webhook_attempts: [AtomicU64; 3],
}

static METRICS: Metrics = Metrics {
    http: Mutex::new(BTreeMap::new()),
    provider_errors: Mutex::new(BTreeMap::new()),
    cold_starts: AtomicU64::new(0),
    reaps: AtomicU64::new(0),
    log_write_errors: AtomicU64::new(0),
    webhook_attempts: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
};

/// The outcomes of a webhook attempt, as labelled.
const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "retry", "failed"];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while counting leaves the counts usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts one answered HTTP request. `route` must be a template (`/v1/gpus/rentals/{id}`)
/// or a fixed word, never a raw path: raw ids would make one series per object.
pub fn observe_http(method: &str, route: &'static str, status: u16, elapsed: Duration) {
    // Unknown methods collapse into one label for the same reason.
    let method = match method {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
        _ => "OTHER",
    };
    let secs = elapsed.as_secs_f64();
    let mut http = lock(&METRICS.http);
    let h = http
        .entry((method.to_string(), route, status))
        .or_insert_with(|| Histogram {
            buckets: vec![0; LATENCY_BUCKETS.len()],
            ..Histogram::default()
        });
    if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
        h.buckets[i] += 1;
    }
    h.count += 1;
    h.sum_micros = h
        .sum_micros
        .saturating_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
}

/// Counts one failed provider call. `operation` is one of list_offers, create_instance,
/// get_instance, list_instances, terminate.
pub fn provider_error(provider: &str, operation: &'static str, err: &ProviderError) {
    let kind = match err {
        ProviderError::NoCapacity => "no_capacity",
        ProviderError::Unauthorized(_) => "unauthorized",
        ProviderError::RateLimited { .. } => "rate_limited",
        ProviderError::Rejected(_) => "rejected",
        ProviderError::Unavailable(_) => "unavailable",
    };
    *lock(&METRICS.provider_errors)
        .entry((provider.to_string(), operation, kind))
        .or_insert(0) += 1;
}

/// Counts one cold start (a model deployment started on a spot GPU).
pub fn cold_start() {
    METRICS.cold_starts.fetch_add(1, Ordering::Relaxed);
}

/// Counts one deployment terminated by the idle reaper.
pub fn reap() {
    METRICS.reaps.fetch_add(1, Ordering::Relaxed);
}

/// Counts one webhook delivery attempt by its outcome: `delivered` (a 2xx), `retry`
/// (due again later) or `failed` (given up).
pub fn webhook_attempt(outcome: &str) {
    if let Some(i) = WEBHOOK_OUTCOMES.iter().position(|o| *o == outcome) {
        METRICS.webhook_attempts[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A log line could not be written (stderr closed or full): it is dropped, counted.
pub fn log_write_error() {
    METRICS.log_write_errors.fetch_add(1, Ordering::Relaxed);
}

/// Escapes a label value for the text format.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the `# HELP` and `# TYPE` lines of one metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends every counter kept here in the text exposition format.
pub fn render_counters(out: &mut String) {
    family(
        out,
        "spotd_http_requests_total",
        "counter",
        "HTTP requests answered, by method, route template and status.",
    );
    let http: Vec<(HttpKey, Histogram)> = lock(&METRICS.http)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for ((m, route, status), h) in &http {
        let _ = writeln!(
            out,
            "spotd_http_requests_total{{method=\"{m}\",route=\"{}\",status=\"{status}\"}} {}",
            escape_label(route),
            h.count
        );
    }
    family(
        out,
        "spotd_http_request_duration_seconds",
        "histogram",
        "Time from request received to response headers, by method, route template and status.",
    );
    for ((m, route, status), h) in &http {
        let labels = format!(
            "method=\"{m}\",route=\"{}\",status=\"{status}\"",
            escape_label(route)
        );
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "spotd_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "spotd_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "spotd_http_request_duration_seconds_sum{{{labels}}} {}.{:06}",
            h.sum_micros / 1_000_000,
            h.sum_micros % 1_000_000
        );
        let _ = writeln!(
            out,
            "spotd_http_request_duration_seconds_count{{{labels}}} {}",
            h.count
        );
    }
    family(
        out,
        "spotd_provider_errors_total",
        "counter",
        "Failed provider calls, by provider, operation and error kind.",
    );
    for ((p, op, kind), n) in lock(&METRICS.provider_errors).iter() {
        let _ = writeln!(
            out,
            "spotd_provider_errors_total{{provider=\"{}\",operation=\"{op}\",kind=\"{kind}\"}} {n}",
            escape_label(p)
        );
    }
    family(
        out,
        "spotd_cold_starts_total",
        "counter",
        "Model deployments started on spot GPUs.",
    );
    let _ = writeln!(
        out,
        "spotd_cold_starts_total {}",
        METRICS.cold_starts.load(Ordering::Relaxed)
    );
    family(
        out,
        "spotd_idle_reaps_total",
        "counter",
        "Deployments terminated after their idle timeout.",
    );
    let _ = writeln!(
        out,
        "spotd_idle_reaps_total {}",
        METRICS.reaps.load(Ordering::Relaxed)
    );
    family(
        out,
        "spotd_webhook_attempts_total",
        "counter",
        "Webhook delivery attempts, by outcome: delivered, retry (due again later), failed (given up).",
    );
    for (o, n) in WEBHOOK_OUTCOMES.iter().zip(&METRICS.webhook_attempts) {
        let _ = writeln!(
            out,
            "spotd_webhook_attempts_total{{outcome=\"{o}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    family(
        out,
        "spotd_log_write_errors_total",
        "counter",
        "Log lines dropped because stderr could not be written (a log reader gone).",
    );
    let _ = writeln!(
        out,
        "spotd_log_write_errors_total {}",
        METRICS.log_write_errors.load(Ordering::Relaxed)
    );
}

/// A provider that counts the failures of the one it wraps; the registry wraps every
/// provider in it, so each real call is counted once whoever makes it.
pub struct Counted {
    inner: Arc<dyn Provider>,
}

impl Counted {
    pub fn wrap(inner: Arc<dyn Provider>) -> Arc<dyn Provider> {
        Arc::new(Counted { inner })
    }

    fn count<T>(&self, op: &'static str, r: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if let Err(e) = &r {
            provider_error(self.inner.name(), op, e);
        }
        r
    }
}

#[async_trait]
impl Provider for Counted {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn serves_models(&self) -> bool {
        self.inner.serves_models()
    }
    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let r = self.inner.list_offers().await;
        self.count("list_offers", r)
    }
    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        let r = self.inner.create_instance(req).await;
        self.count("create_instance", r)
    }
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self.inner.get_instance(id).await;
        self.count("get_instance", r)
    }
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let r = self.inner.list_instances().await;
        self.count("list_instances", r)
    }
    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self.inner.terminate(id).await;
        self.count("terminate", r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render() -> String {
        let mut s = String::new();
        render_counters(&mut s);
        s
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        // A route name no other test uses: the counters are process-wide.
        observe_http("GET", "/test/histogram", 200, Duration::from_millis(3));
        observe_http("GET", "/test/histogram", 200, Duration::from_millis(200));
        observe_http("GET", "/test/histogram", 200, Duration::from_secs(1000));
        let s = render();
        let l = "method=\"GET\",route=\"/test/histogram\",status=\"200\"";
        for (le, n) in [
            ("0.001", 0),
            ("0.005", 1),
            ("0.25", 2),
            ("300", 2),
            ("+Inf", 3),
        ] {
            let line =
                format!("spotd_http_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}\n");
            assert!(s.contains(&line), "missing {line} in\n{s}");
        }
        assert!(s.contains(&format!("spotd_http_requests_total{{{l}}} 3\n")));
        assert!(s.contains(&format!(
            "spotd_http_request_duration_seconds_sum{{{l}}} 1000.203000\n"
        )));
    }

    #[test]
    fn odd_methods_and_labels_stay_bounded_and_escaped() {
        observe_http("BREW", "/test/odd", 404, Duration::ZERO);
        provider_error("we\"ird", "terminate", &ProviderError::NoCapacity);
        let s = render();
        assert!(s.contains("method=\"OTHER\",route=\"/test/odd\",status=\"404\"} 1\n"));
        assert!(s.contains(
            "spotd_provider_errors_total{provider=\"we\\\"ird\",operation=\"terminate\",kind=\"no_capacity\"} 1\n"
        ));
    }
}
