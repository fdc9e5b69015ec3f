//! A tiny deterministic OpenAI-compatible model server: what a sandbox model instance
//! and the sandbox hosted upstream answer.
//!
//! It does not generate anything: the reply is a fixed sentence naming the model and
//! echoing the start of the last prompt, cut at `max_tokens`. Token counts are honest
//! for this toy tokenizer (one token per whitespace-separated word), so billing by
//! `usage` can be checked exactly, and a streamed answer's usage chunk says exactly what
//! the plain answer to the same request says. This module only computes answers and
//! their chunks; `stream` paces them onto the wire. Embeddings are 8 floats derived
//! from a hash of each input, so the same input always gets the same vector.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::catalog::str_key;
use super::server::Reply;
use super::sim::mix;

/// Words of the last prompt echoed back.
const ECHO_WORDS: usize = 12;
/// Reply length when the request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: u64 = 256;
/// Dimensions of a sandbox embedding.
pub const EMBEDDING_DIMS: usize = 8;
/// A model whose name ends with this answers 500 (fault injection for tests).
pub const FAIL_SUFFIX: &str = "-fail";

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

/// OpenAI's error shape.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Reply {
    coded_error(status, kind, None, message)
}

/// OpenAI's error shape with a machine-readable `code`.
fn coded_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"message": message, "type": kind, "code": code, "param": null}}),
    )
}

fn bad_request(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
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

/// The body as a JSON object and its `model`, after the `-fail` and `serves` checks.
fn open_request(body: &[u8], serves: &dyn Fn(&str) -> bool) -> Result<(Value, String), Reply> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(bad_request("the body must be a JSON object")),
    };
    let Some(model) = req.get("model").and_then(Value::as_str).map(String::from) else {
        return Err(bad_request("'model' is required"));
    };
    // Checked before `serves` so any server, hosted or an instance, can be made to fail.
    if model.ends_with(FAIL_SUFFIX) {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "simulated upstream failure (the model name ends with -fail)",
        ));
    }
    if !serves(&model) {
        // As OpenAI answers it: the model is unknown here, or not one for this
        // endpoint (a chat model asked for embeddings).
        return Err(coded_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            &format!("The model '{model}' does not exist here or does not serve this endpoint."),
        ));
    }
    Ok((req, model))
}

/// A computed completion: everything needed for the plain body or the chunks.
pub struct Answer {
    kind: Kind,
    id: String,
    model: String,
    created: i64,
    /// The words produced, in order (one token each).
    out: Vec<String>,
    finish: &'static str,
    prompt_tokens: usize,
    pub stream: bool,
    include_usage: bool,
}

/// One server-sent event of a streamed answer.
pub struct Event {
    pub data: Value,
    /// Carries a piece of the answer text (what `x-sandbox-cut-after` counts).
    pub content: bool,
}

/// Parses `/chat/completions` or `/completions`. `serves` decides whether the requested
/// model is served here; `now_secs` is the `created` field. Errors are ready replies.
pub fn complete(
    kind: Kind,
    body: &[u8],
    serves: &dyn Fn(&str) -> bool,
    now_secs: i64,
) -> Result<Answer, Reply> {
    let (req, model) = open_request(body, serves)?;
    let (all, last) = prompt(kind, &req).map_err(bad_request)?;
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
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    // Unique per answer, as OpenAI's are: the body's hash and this process's count.
    static ANSWERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = ANSWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let hash = str_key(&String::from_utf8_lossy(body));
    Ok(Answer {
        kind,
        id: format!("{prefix}-{:08x}{seq:08x}", hash >> 32),
        created: now_secs,
        out: full[..cut].iter().map(|w| w.to_string()).collect(),
        finish: if cut < full.len() { "length" } else { "stop" },
        prompt_tokens: words(&all).count(),
        stream: req.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        model,
    })
}

impl Answer {
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.out.len(),
            "total_tokens": self.prompt_tokens + self.out.len(),
        })
    }

    /// The whole answer text.
    pub fn text(&self) -> String {
        self.out.join(" ")
    }

    /// The non-streamed answer body.
    pub fn body(&self) -> Value {
        let text = self.text();
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                       "logprobs": null, "finish_reason": self.finish}),
            ),
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": self.finish}),
            ),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [choice], "usage": self.usage()})
    }

    /// The streamed answer as OpenAI sends it: for chat a role chunk, one chunk per
    /// word, a chunk with an empty delta and the `finish_reason`, and, only when
    /// `stream_options.include_usage` is set, a usage chunk with `choices: []` (every
    /// other chunk then carries `"usage": null`). `data: [DONE]` is the caller's.
    pub fn events(&self) -> Vec<Event> {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let chunk = |choices: Value| {
            let mut c = json!({"id": self.id, "object": object, "created": self.created,
                               "model": self.model, "system_fingerprint": null, "choices": choices});
            if self.include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let choice = |content: Option<&str>, finish: Option<&str>| match self.kind {
            Kind::Chat => {
                let delta = content.map_or(json!({}), |c| json!({"content": c}));
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
            }
            Kind::Completion => {
                json!([{"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish}])
            }
        };
        let mut events = Vec::with_capacity(self.out.len() + 3);
        if self.kind == Kind::Chat {
            events.push(Event {
                data: chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                                    "logprobs": null, "finish_reason": null}])),
                content: false,
            });
        }
        for (i, w) in self.out.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            events.push(Event {
                data: chunk(choice(Some(&piece), None)),
                content: true,
            });
        }
        events.push(Event {
            data: chunk(choice(None, Some(self.finish))),
            content: false,
        });
        if self.include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = self.usage();
            events.push(Event {
                data: last,
                content: false,
            });
        }
        events
    }
}

/// `POST /embeddings`: `input` is a string, an array of strings, an array of token
/// ids or an array of such arrays, as in the OpenAI API; `dimensions` (1 to
/// [`EMBEDDING_DIMS`]) shortens each vector to its first that many values.
pub fn embeddings(body: &[u8], serves: &dyn Fn(&str) -> bool) -> Reply {
    let (req, model) = match open_request(body, serves) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    // Each input as the text its vector is derived from, and its token count.
    let token_text = |t: &[Value]| -> Option<(String, usize)> {
        let ids: Option<Vec<String>> = t
            .iter()
            .map(|x| x.as_u64().map(|n| n.to_string()))
            .collect();
        ids.filter(|v| !v.is_empty())
            .map(|v| (format!("tokens:{}", v.join(",")), v.len()))
    };
    let inputs: Option<Vec<(String, usize)>> = match req.get("input") {
        Some(Value::String(s)) => Some(vec![(s.clone(), words(s).count())]),
        Some(Value::Array(a)) if !a.is_empty() => {
            if a.iter().all(Value::is_string) {
                a.iter()
                    .map(|x| x.as_str().map(|s| (s.to_string(), words(s).count())))
                    .collect()
            } else if a.iter().all(Value::is_number) {
                token_text(a).map(|t| vec![t])
            } else {
                a.iter()
                    .map(|x| x.as_array().and_then(|t| token_text(t)))
                    .collect()
            }
        }
        _ => None,
    };
    let Some(inputs) = inputs else {
        return bad_request("'input' must be a string, an array of strings, an array of token ids or an array of arrays of token ids");
    };
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => EMBEDDING_DIMS,
        Some(d) => match d.as_u64() {
            Some(n) if (1..=EMBEDDING_DIMS as u64).contains(&n) => n as usize,
            _ => {
                return bad_request(&format!(
                    "'dimensions' must be an integer from 1 to {EMBEDDING_DIMS} for this model"
                ))
            }
        },
    };
    // The openai SDKs ask for base64 (little-endian f32) unless told otherwise.
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(v) if v == "float" => false,
        Some(v) if v == "base64" => true,
        Some(_) => return bad_request("'encoding_format' must be 'float' or 'base64'"),
    };
    let tokens: usize = inputs.iter().map(|(_, n)| n).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (s, _))| {
            let mut v = embedding(s);
            v.truncate(dims);
            let e = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                json!(crate::ids::base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    Reply::json(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

/// The vector of `input`: each dimension a hash of (input, dimension) mapped to
/// [-1, 1) and rounded to 6 decimals so its JSON text is short and stable.
pub fn embedding(input: &str) -> Vec<f64> {
    let key = str_key(input);
    (0..EMBEDDING_DIMS as u64)
        .map(|d| {
            let unit = (mix(&[key, d]) >> 11) as f64 / (1u64 << 53) as f64;
            ((unit * 2.0 - 1.0) * 1e6).round() / 1e6
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::stream::ReplyBody;

    fn call(kind: Kind, body: Value) -> Result<Answer, StatusCode> {
        complete(kind, body.to_string().as_bytes(), &|m| m == "m", 7).map_err(|r| r.status)
    }

    #[test]
    fn chat_counts_words_honestly() {
        let a = call(
            Kind::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "hello there  world"}]}),
        )
        .unwrap();
        let v = a.body();
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            text,
            "This is a simulated answer from m to: hello there world"
        );
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(3));
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(11));
        assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(14));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn max_tokens_cuts_and_the_usage_chunk_matches_the_plain_answer() {
        let req = json!({"model": "m", "max_tokens": 3, "stream": true,
                         "stream_options": {"include_usage": true},
                         "messages": [{"role": "user", "content": "a b"}]});
        let a = call(Kind::Chat, req).unwrap();
        assert!(a.stream);
        let ev = a.events();
        assert_eq!(ev.iter().filter(|e| e.content).count(), 3);
        assert_eq!(ev[0].data["choices"][0]["delta"]["role"], "assistant");
        let text: String = ev
            .iter()
            .filter_map(|e| e.data["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "This is a");
        let last = &ev[ev.len() - 1].data;
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"], a.body()["usage"]);
        assert_eq!(last["usage"]["completion_tokens"].as_u64(), Some(3));
        assert_eq!(
            ev[ev.len() - 2].data["choices"][0]["finish_reason"],
            "length"
        );
        // Without include_usage: no usage chunk and no usage key at all.
        let b = call(
            Kind::Completion,
            json!({"model": "m", "prompt": "x", "stream": true}),
        )
        .unwrap();
        let ev = b.events();
        assert!(ev.iter().all(|e| e.data.get("usage").is_none()));
        assert_eq!(ev[0].data["object"], "text_completion");
        assert_eq!(ev[ev.len() - 1].data["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn answer_ids_are_unique_even_for_the_same_prompt() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let a = call(Kind::Chat, body.clone()).unwrap();
        let b = call(Kind::Chat, body).unwrap();
        assert!(a.id.starts_with("chatcmpl-") && b.id.starts_with("chatcmpl-"));
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn bad_requests_and_fail_models_get_openai_errors() {
        assert_eq!(
            call(Kind::Chat, json!([1])).err(),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            call(Kind::Chat, json!({"model": "other", "messages": []})).err(),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            call(Kind::Chat, json!({"model": "m-fail", "messages": []})).err(),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            call(Kind::Completion, json!({"model": "m"})).err(),
            Some(StatusCode::BAD_REQUEST)
        );
        let a = call(Kind::Completion, json!({"model": "m", "prompt": "x y"})).unwrap();
        assert_eq!(a.usage()["prompt_tokens"].as_u64(), Some(2));
    }

    #[test]
    fn embeddings_are_deterministic_per_input() {
        let e = embedding("hello world");
        assert_eq!(e.len(), EMBEDDING_DIMS);
        assert_eq!(e, embedding("hello world"));
        assert_ne!(e, embedding("hello worlds"));
        assert!(e.iter().all(|x| (-1.0..1.0).contains(x)));
        let r = embeddings(br#"{"model": "m", "input": [1, "a"]}"#, &|m| m == "m");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = embeddings(br#"{"model": "m-fail", "input": "a"}"#, &|m| m == "m");
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = embeddings(
            br#"{"model": "m", "input": "a", "encoding_format": "hex"}"#,
            &|m| m == "m",
        );
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }

    fn vectors(r: &Reply) -> Vec<Vec<f64>> {
        let ReplyBody::Full(Some(b)) = &r.body else {
            panic!("not a JSON body");
        };
        let v: Value = serde_json::from_slice(b).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
            .collect()
    }

    #[test]
    fn embeddings_take_token_arrays_and_dimensions() {
        let serves = |m: &str| m == "m";
        let one = embeddings(br#"{"model": "m", "input": [1, 2, 3]}"#, &serves);
        assert_eq!(one.status, StatusCode::OK);
        assert_eq!(vectors(&one).len(), 1);
        let many = embeddings(br#"{"model": "m", "input": [[1, 2, 3], [4]]}"#, &serves);
        assert_eq!(many.status, StatusCode::OK);
        let v = vectors(&many);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], vectors(&one)[0], "the same tokens, the same vector");
        assert_ne!(v[0], v[1]);
        // dimensions: the first N values of the same vector.
        let short = embeddings(
            br#"{"model": "m", "input": "a b", "dimensions": 3}"#,
            &serves,
        );
        assert_eq!(short.status, StatusCode::OK);
        assert_eq!(vectors(&short)[0], embedding("a b")[..3].to_vec());
        for bad in [
            r#"{"model": "m", "input": "a", "dimensions": 0}"#,
            r#"{"model": "m", "input": "a", "dimensions": 9}"#,
            r#"{"model": "m", "input": "a", "dimensions": "3"}"#,
            r#"{"model": "m", "input": [[]]}"#,
        ] {
            assert_eq!(
                embeddings(bad.as_bytes(), &serves).status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(crate::ids::base64_encode(b""), "");
        assert_eq!(crate::ids::base64_encode(b"f"), "Zg==");
        assert_eq!(crate::ids::base64_encode(b"fo"), "Zm8=");
        assert_eq!(crate::ids::base64_encode(b"foo"), "Zm9v");
        assert_eq!(crate::ids::base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(crate::ids::base64_encode(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
