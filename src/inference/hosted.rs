//! Hosted models: requests proxied to an upstream OpenAI-compatible API with spotd's
//! key for it, billed per token from the answer's `usage` (for a stream, from its last
//! chunk, which spotd asks for; a stream cut before it is billed for what was
//! delivered, the prompt estimated by its words).

use serde_json::{json, Value};

use super::admission::Reserved;
use super::catalog::{token_cost, HostedModel};
use super::stream::{SseMeter, Usage};
use super::{read_all, Answer, Endpoint, Inference};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids;
use crate::ledger;
use crate::store::Store;

impl Inference {
    pub(super) async fn proxy_hosted(
        &self,
        account: &str,
        ep: Endpoint,
        h: &HostedModel,
        req: &mut Value,
        stream: bool,
    ) -> Result<Answer> {
        let client_wants_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if stream {
            // Ask for usage so the final chunk can be billed.
            match req.get_mut("stream_options").and_then(Value::as_object_mut) {
                Some(o) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                None => req["stream_options"] = json!({"include_usage": true}),
            }
        }
        let prompt_words = prompt_words(req);
        let request_id = ids::new_id("req");
        let body = serde_json::to_vec(&*req).map_err(|e| Error::Bug(e.to_string()))?;
        // Its largest cost is reserved before it is sent: an answer is always chargeable.
        let estimate = token_cost(
            h,
            max_input_tokens(req, body.len()),
            max_output_tokens(req, ep, self.cfg.reserve_output_tokens),
        );
        let reserved = self
            .admission
            .reserve(&self.store, account, estimate, self.clock.now())
            .await?;
        let url = format!("{}{}", h.base_url, ep.path());
        let resp = self
            .forward(&url, h.api_key.as_deref(), body, &h.upstream)
            .await?;
        let billing = HostedBilling {
            store: self.store.clone(),
            clock: self.clock.clone(),
            account: account.to_string(),
            model: h.clone(),
            request_id: request_id.clone(),
            prompt_words,
            reserved,
        };
        if stream && resp.is_event_stream() {
            let status = resp.status;
            let tasks = self.tasks.clone();
            let meter = SseMeter::new(
                resp.body,
                !client_wants_usage,
                Box::new(move |o| {
                    let usage = o.usage.unwrap_or(Usage {
                        prompt_tokens: if o.content_chunks > 0 {
                            billing.prompt_words
                        } else {
                            0
                        },
                        completion_tokens: o.content_chunks,
                    });
                    let note = (!o.completed)
                        .then_some("stream cut before the end: billed for what was delivered");
                    tasks.spawn(billing.charge(usage, note));
                }),
            );
            return Ok(Answer::Events {
                status,
                events: meter,
                request_id,
            });
        }
        let (status, bytes) = read_all(resp).await?;
        let usage = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| Usage::from_json(&v));
        // Answered as soon as the upstream has: the charge is committed in the writer's
        // next group commit, tracked (a graceful stop waits for it), and the reservation
        // stays until it is durable, so admission still counts it. What kill -9 can lose
        // is the charges of requests answered within the last commit window (README).
        match usage {
            Some(u) => self.tasks.spawn(billing.charge(u, None)),
            None => billing.reserved.release().await,
        }
        Ok(Answer::Json {
            status,
            body: bytes,
            request_id,
        })
    }
}

/// Charges a hosted request per token.
struct HostedBilling {
    store: Store,
    clock: Clock,
    account: String,
    model: HostedModel,
    request_id: String,
    prompt_words: u64,
    /// Let go once the charge is durable.
    reserved: Reserved,
}

impl HostedBilling {
    async fn charge(self, u: Usage, note: Option<&'static str>) {
        let cost = token_cost(&self.model, u.prompt_tokens, u.completion_tokens);
        if cost == crate::money::Usd::ZERO {
            self.reserved.release().await;
            return;
        }
        let mut text = format!(
            "{}: {} input + {} output tokens",
            self.model.id, u.prompt_tokens, u.completion_tokens
        );
        if let Some(n) = note {
            text.push_str("; ");
            text.push_str(n);
        }
        let (acct, rid, clock) = (
            self.account.clone(),
            self.request_id.clone(),
            self.clock.clone(),
        );
        let res = self
            .store
            .write(move |tx| {
                let mut a = tx
                    .account(&acct)?
                    .ok_or_else(|| Error::Bug("account vanished".into()))?;
                let charged = ledger::charge_request(tx, &mut a, cost, &rid, text, clock.now())?;
                tx.put_account(&a)?;
                Ok::<_, Error>(charged)
            })
            .await;
        match res {
            Ok(c) if c < cost => {
                tracing::warn!(request = %self.request_id, due = %cost, charged = %c,
                "hosted request charge capped at the available credit or the monthly budget")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request = %self.request_id, error = %e, "hosted request charge failed")
            }
        }
        self.reserved.release().await;
    }
}

/// Whitespace-separated words of the prompt: the estimate of input tokens billed for a
/// stream cut before the upstream reported usage.
fn prompt_words(req: &Value) -> u64 {
    fn text(v: &Value, out: &mut u64) {
        match v {
            Value::String(s) => *out += s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().for_each(|x| text(x, out)),
            Value::Object(o) => {
                for k in ["content", "text", "prompt", "input"] {
                    if let Some(x) = o.get(k) {
                        text(x, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut n = 0;
    for k in ["messages", "prompt", "input"] {
        if let Some(v) = req.get(k) {
            text(v, &mut n);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prompt_words_counts_messages_and_inputs() {
        let v = json!({"messages": [{"role": "user", "content": "hello there world"},
            {"role": "user", "content": [{"type": "text", "text": "two words"}]}]});
        assert_eq!(prompt_words(&v), 5);
        assert_eq!(prompt_words(&json!({"input": ["a b", "c"]})), 3);
    }
}

/// An upper bound on the input tokens of a request of `bytes` bytes: no tokenizer makes
/// fewer than one byte of JSON text per token, and each image or audio part (whose
/// tokens are not in its text) counts as `PART_TOKENS` more.
fn max_input_tokens(req: &Value, bytes: usize) -> u64 {
    let parts = req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|p| {
            p.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "text")
        })
        .count() as u64;
    (bytes as u64).saturating_add(parts.saturating_mul(PART_TOKENS))
}

/// Input tokens counted for one image or audio part (a high-detail image is at most a
/// few thousand).
const PART_TOKENS: u64 = 8_192;

/// The most output tokens the request allows: its `max_completion_tokens` or
/// `max_tokens` (times `n` choices), else `default`; embeddings have none.
fn max_output_tokens(req: &Value, ep: Endpoint, default: u64) -> u64 {
    if ep == Endpoint::Embeddings {
        return 0;
    }
    let field = |k: &str| req.get(k).and_then(Value::as_u64);
    let max = field("max_completion_tokens")
        .or_else(|| field("max_tokens"))
        .unwrap_or(default);
    let n = field("n").unwrap_or(1).max(1);
    max.saturating_mul(n)
}

#[cfg(test)]
mod reserve_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_output_bound_follows_max_tokens_and_n() {
        let chat = Endpoint::Chat;
        assert_eq!(max_output_tokens(&json!({}), chat, 4096), 4096);
        assert_eq!(max_output_tokens(&json!({"max_tokens": 8}), chat, 4096), 8);
        assert_eq!(
            max_output_tokens(
                &json!({"max_tokens": 8, "max_completion_tokens": 3}),
                chat,
                9
            ),
            3
        );
        assert_eq!(
            max_output_tokens(&json!({"max_tokens": 8, "n": 3}), chat, 9),
            24
        );
        assert_eq!(
            max_output_tokens(&json!({"max_tokens": 8}), Endpoint::Embeddings, 9),
            0
        );
    }
}
