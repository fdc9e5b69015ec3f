//! A pass-through stream of proxied server-sent events that watches what goes by.
//!
//! Events are forwarded as soon as each one is complete (never the whole answer), the
//! `usage` of the final chunk is captured for billing (and dropped when the client did
//! not ask for it), and content chunks are counted so a stream cut midway can be billed
//! for what was delivered. When the stream ends, fails, or the client goes away (the
//! body is dropped, which also drops the upstream response and cancels its request),
//! `on_end` runs exactly once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

use crate::http_client::Chunks;

/// One server-sent event larger than this ends the stream (an upstream that never
/// separates events must not grow the buffer without bound).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Token counts an upstream reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn from_json(v: &Value) -> Option<Usage> {
        let u = v.get("usage")?;
        if u.is_null() {
            return None;
        }
        Some(Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion_tokens: u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }
}

/// How a proxied stream ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub usage: Option<Usage>,
    /// Chunks that carried content (about one token each).
    pub content_chunks: u64,
    /// The upstream finished the stream (`[DONE]` or end of body) and the client took it.
    pub completed: bool,
}

pub type OnEnd = Box<dyn FnOnce(Outcome) + Send + Sync>;

/// The events of an upstream stream, as chunks to pass on (each ends on an event
/// boundary), with `on_end` told how it went.
pub struct SseMeter {
    inner: Chunks,
    strip_usage: bool,
    buf: Vec<u8>,
    outcome: Outcome,
    on_end: Option<OnEnd>,
}

impl SseMeter {
    pub fn new(inner: Chunks, strip_usage: bool, on_end: OnEnd) -> SseMeter {
        SseMeter {
            inner,
            strip_usage,
            buf: Vec::new(),
            outcome: Outcome::default(),
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(f) = self.on_end.take() {
            self.outcome.completed = completed;
            f(self.outcome);
        }
    }

    /// Takes the complete events out of the buffer, returns what to forward.
    fn drain_events(&mut self, at_end: bool) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((end, sep)) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end + sep).collect();
            if self.keep(&event) {
                out.extend_from_slice(&event);
            }
        }
        if at_end && !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            if self.keep(&rest) {
                out.extend_from_slice(&rest);
            }
        }
        out
    }

    /// Looks at one event; answers whether to forward it.
    fn keep(&mut self, event: &[u8]) -> bool {
        let text = String::from_utf8_lossy(event);
        let mut keep = true;
        for line in text.lines() {
            let Some(payload) = line.strip_prefix("data:") else {
                continue;
            };
            let payload = payload.trim();
            if payload == "[DONE]" || payload.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(payload) else {
                continue;
            };
            if let Some(u) = Usage::from_json(&v) {
                self.outcome.usage = Some(u);
                let no_choices = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_none_or(|c| c.is_empty());
                if self.strip_usage && no_choices {
                    keep = false;
                }
            }
            let has_content = v
                .get("choices")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .map(|c| {
                    let delta = c
                        .get("delta")
                        .and_then(|d| d.get("content"))
                        .and_then(Value::as_str);
                    let text = c.get("text").and_then(Value::as_str);
                    delta.or(text).is_some_and(|s| !s.is_empty())
                })
                .unwrap_or(false);
            if has_content {
                self.outcome.content_chunks += 1;
            }
        }
        keep
    }
}

fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

impl Stream for SseMeter {
    type Item = Result<Bytes, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.on_end.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    this.buf.extend_from_slice(&data);
                    let out = this.drain_events(false);
                    if this.buf.len() > MAX_EVENT_BYTES {
                        this.finish(false);
                        return Poll::Ready(Some(Err(
                            "the upstream sent an event larger than 1 MiB".into(),
                        )));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let out = this.drain_events(true);
                    this.finish(true);
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from(out))));
                }
            }
        }
    }
}

impl Drop for SseMeter {
    fn drop(&mut self) {
        // The client went away (or the server is stopping) before the end.
        self.finish(false);
    }
}
