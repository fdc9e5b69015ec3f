//! Cold models for tools that cannot set headers: `deployments.default_wait_seconds`
//! (SPEC section 10) holds a request that sends no `Prefer` header until the model is
//! ready; an explicit `Prefer` still decides; a streamed request to a model that is not
//! ready is a 503 + Retry-After error (which the SDKs raise), never a 202 JSON body
//! that an SDK's stream iterator would end on silently.

use hyper::Method;
use serde_json::json;

use crate::common::Daemon;

const COLD: &str = "meta-llama/Llama-3.1-8B-Instruct";
const OTHER: &str = "meta-llama/Llama-3.3-70B-Instruct";

fn chat(model: &str, stream: bool) -> Vec<u8> {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "hello from a tool without headers"}]})
    .to_string()
    .into_bytes()
}

async fn deployments(d: &Daemon, key: &str, model: &str) -> usize {
    let r = d.get("/v1/gpus/rentals", key).await;
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == model)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_wait_answers_a_request_without_prefer_with_the_completion() {
    let d = Daemon::in_process(
        "[sandbox]\nmodel_load_seconds = 5\n[deployments]\ndefault_wait_seconds = 120\n",
    )
    .await;
    let key = d.demo_key.clone();
    let t0 = d.clock().now();
    let r = d
        .call_parked(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(chat(COLD, false)),
            true,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    assert!(r.body["choices"][0]["message"]["content"].is_string());
    let waited = d.clock().now() - t0;
    assert!(waited >= 5_000, "it waited for the deployment: {waited} ms");
    assert_eq!(deployments(&d, &key, COLD).await, 1);

    // An explicit Prefer decides: `wait=0` answers 202 at once, default or not.
    let r = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[("Prefer", "wait=0")],
            Some(chat(OTHER, false)),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["type"], "model_deploying");
    // And a Prefer without a wait preference does not wait either.
    let r = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[("Prefer", "return=minimal")],
            Some(chat(OTHER, false)),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(deployments(&d, &key, OTHER).await, 1, "one deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_a_request_without_prefer_gets_the_202() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let r = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(chat(COLD, false)),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_to_a_model_not_ready_is_a_503_error_then_streams_once_ready() {
    let d = Daemon::in_process("[sandbox]\nmodel_load_seconds = 1\n").await;
    let key = d.demo_key.clone();
    let r = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(chat(COLD, true)),
        )
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "model_deploying");
    assert_eq!(r.body["error"]["type"], "service_unavailable");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Prefer: wait"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    // The request started the deployment (one, however often the client retries).
    assert_eq!(deployments(&d, &key, COLD).await, 1);
    let again = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(chat(COLD, true)),
        )
        .await;
    assert_eq!(again.status, 503);
    assert_eq!(deployments(&d, &key, COLD).await, 1);

    // Once it is ready, the same request streams.
    d.advance(retry + 5).await;
    let r = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(chat(COLD, true)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let text = r.body.as_str().unwrap_or_default().to_string();
    assert!(text.contains("data: [DONE]"), "{text}");
}
