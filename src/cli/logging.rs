//! Logging for `serve` and `sandbox-cloud`: tracing to stderr, human text by default,
//! JSON lines for log collectors. The filter comes from `SPOTD_LOG` (default `info`).
//!
//! The JSON format is a small `FormatEvent` rather than tracing-subscriber's `json`
//! feature, which would pull in another crate for one line of output per event.
//!
//! A log line that cannot be written (stderr closed: the reader of a pipe went away, a
//! full disk) is dropped and counted (`spotd_log_write_errors_total`), never an error:
//! tracing-subscriber would report it with `eprint!`, which panics on a closed stderr,
//! in whatever task was logging (a request, the signal handler).

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::clock::{rfc3339, Clock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. A bad `SPOTD_LOG` falls back to `info` with a warning
/// rather than refusing to start.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let (filter, bad) = match filter.map(EnvFilter::try_new) {
        None => (EnvFilter::new("info"), None),
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        .log_internal_errors(false);
    // try_init: a second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!("SPOTD_LOG is not a valid filter ({e}); using info");
    }
}

/// stderr, where a failed write is counted and dropped.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            crate::metrics::log_write_error();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Span fields stored as a JSON object's text, so that [`JsonLines`] can merge a
/// span's fields (the request span's `method` and `route`) into each event's line.
struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut obj = Map::new();
        fields.record(&mut JsonVisitor(&mut obj));
        write!(writer, "{}", Value::Object(obj))
    }
}

/// One JSON object per event: `{"timestamp","level","target","spans"?,"message",...fields}`,
/// the fields of the enclosing spans included (the event's own win on a clash).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            Value::String(rfc3339(Clock::system().now())),
        );
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        obj.insert("target".into(), Value::String(meta.target().to_string()));
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                spans.push(Value::String(span.name().to_string()));
                let ext = span.extensions();
                let fields = ext
                    .get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(f).ok());
                obj.extend(fields.unwrap_or_default());
            }
            obj.insert("spans".into(), Value::Array(spans));
        }
        event.record(&mut JsonVisitor(&mut obj));
        writeln!(writer, "{}", Value::Object(obj))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or(Value::Null);
        self.0.insert(field.name().into(), v);
    }
}
