//! A tiny deterministic OpenAI-compatible model server: what a sandbox model instance
//! and the sandbox hosted upstream answer.
//!
//! It does not generate anything: the reply is a fixed sentence naming the model and
//! echoing the start of the last prompt, cut at `max_tokens`. Token counts are honest
//! for this toy tokenizer (one token per whitespace-separated word), so billing by
//! `usage` can be checked exactly. `stream: true` answers server-sent events, with a
//! final usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::server::Reply;

/// Words of the last prompt echoed back.
const ECHO_WORDS: usize = 12;
/// Reply length when the request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: u64 = 256;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

/// OpenAI's error shape.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"message": message, "type": kind, "code": null, "param": null}}),
    )
}

/// `GET /models`.
pub fn models(models: &[String], created_secs: i64) -> Reply {
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": created_secs, "owned_by": "spotd-sandbox"}))
        .collect();
    Reply::json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split_whitespace()
}

/// Text of a message `content`: a string, or an array of `{"type": "text", "text"}` parts.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// (all prompt text, the last prompt) of a request, or a message for a 400.
fn prompt(kind: Kind, req: &Value) -> Result<(String, String), &'static str> {
    match kind {
        Kind::Chat => {
            let msgs = req
                .get("messages")
                .and_then(Value::as_array)
                .ok_or("'messages' must be an array")?;
            let texts: Vec<String> = msgs
                .iter()
                .map(|m| m.get("content").map(content_text).unwrap_or_default())
                .collect();
            let last = texts.last().cloned().unwrap_or_default();
            Ok((texts.join(" "), last))
        }
        Kind::Completion => {
            let text = match req.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => return Err("'prompt' must be a string or an array of strings"),
            };
            Ok((text.clone(), text))
        }
    }
}

/// Answers `/chat/completions` or `/completions`. `serves` decides whether the
/// requested model is served here; `now_secs` is the `created` field.
pub fn complete(kind: Kind, body: &[u8], serves: &dyn Fn(&str) -> bool, now_secs: i64) -> Reply {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the body must be a JSON object",
            )
        }
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'model' is required",
        );
    };
    if !serves(model) {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("The model '{model}' does not exist here."),
        );
    }
    let (all, last) = match prompt(kind, &req) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", m),
    };
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let echo: Vec<&str> = words(&last).take(ECHO_WORDS).collect();
    let sentence = format!(
        "This is a simulated answer from {model} to: {}",
        echo.join(" ")
    );
    let full: Vec<&str> = words(&sentence).collect();
    let cut = usize::try_from(max).unwrap_or(usize::MAX).min(full.len());
    let out = &full[..cut];
    let finish = if cut < full.len() { "length" } else { "stop" };
    let prompt_tokens = words(&all).count();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": out.len(),
        "total_tokens": prompt_tokens + out.len(),
    });
    let id = format!(
        "{}-{:016x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        super::catalog::str_key(&String::from_utf8_lossy(body))
    );
    let text = out.join(" ");
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let (object, choice) = match kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}),
            ),
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "finish_reason": finish}),
            ),
        };
        return Reply::json(
            StatusCode::OK,
            &json!({"id": id, "object": object, "created": now_secs, "model": model,
                    "choices": [choice], "usage": usage}),
        );
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = |choices: Value| {
        let mut c = json!({"id": id, "object": object, "created": now_secs, "model": model, "choices": choices});
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = Vec::new();
    if kind == Kind::Chat {
        events.push(chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        ));
    }
    for (i, w) in out.iter().enumerate() {
        let piece = if i == 0 {
            (*w).to_string()
        } else {
            format!(" {w}")
        };
        events.push(chunk(match kind {
            Kind::Chat => json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]),
            Kind::Completion => json!([{"index": 0, "text": piece, "finish_reason": null}]),
        }));
    }
    events.push(chunk(match kind {
        Kind::Chat => json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
        Kind::Completion => json!([{"index": 0, "text": "", "finish_reason": finish}]),
    }));
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(last);
    }
    let mut sse = String::new();
    for e in events {
        sse.push_str("data: ");
        sse.push_str(&e.to_string());
        sse.push_str("\n\n");
    }
    sse.push_str("data: [DONE]\n\n");
    Reply::sse(sse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: Kind, body: Value) -> (StatusCode, String) {
        let r = complete(kind, body.to_string().as_bytes(), &|m| m == "m", 7);
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    #[test]
    fn chat_counts_words_honestly() {
        let (s, b) = call(
            Kind::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "hello there  world"}]}),
        );
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_str(&b).unwrap();
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            text,
            "This is a simulated answer from m to: hello there world"
        );
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(3));
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(11));
        assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(14));
    }

    #[test]
    fn max_tokens_cuts_and_streams_with_usage() {
        let (s, b) = call(
            Kind::Chat,
            json!({"model": "m", "max_tokens": 3, "stream": true,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "a b"}]}),
        );
        assert_eq!(s, StatusCode::OK);
        assert!(b.ends_with("data: [DONE]\n\n"));
        let chunks: Vec<Value> = b
            .split("\n\n")
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "This is a");
        let last = chunks.last().unwrap();
        assert_eq!(last["usage"]["completion_tokens"].as_u64(), Some(3));
        assert_eq!(last["usage"]["prompt_tokens"].as_u64(), Some(2));
        assert!(b.contains("\"finish_reason\":\"length\""));
    }

    #[test]
    fn bad_requests_get_openai_errors() {
        assert_eq!(call(Kind::Chat, json!([1])).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            call(Kind::Chat, json!({"model": "other", "messages": []})).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(Kind::Completion, json!({"model": "m"})).0,
            StatusCode::BAD_REQUEST
        );
        let (s, b) = call(Kind::Completion, json!({"model": "m", "prompt": "x y"}));
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains("\"prompt_tokens\":2"), "{b}");
    }
}
