//! The sandbox model servers over real HTTP on 127.0.0.1: streaming read frame by frame,
//! embeddings, fault injection, and clients that go away mid-stream.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::http_client::{HttpClient, HttpError};
use crate::providers::protocol::{CreateInstance, Instance};

const T0: Millis = 1_800_000_000_000;

async fn boot(dir: &Path) -> (SandboxHandle, Clock) {
    let clock = Clock::manual(T0);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = start(l, config::Sandbox::default(), dir, clock.clone())
        .await
        .unwrap();
    (h, clock)
}

fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(10))
}

/// POSTs `body` on its own connection and returns the status, the unread body and the
/// connection task (abort it and drop the body to hang up).
async fn open(
    h: &SandboxHandle,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, Incoming, JoinHandle<()>) {
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::post(path)
        .header("host", h.addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (resp.status(), resp.into_body(), task)
}

/// Reads every frame; `true` when the body ended in an error (a broken connection).
async fn frames(body: &mut Incoming) -> (Vec<Bytes>, bool) {
    let mut out = Vec::new();
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    out.push(d);
                }
            }
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

/// The `data:` payloads of a server-sent event stream.
fn events(frames: &[Bytes]) -> Vec<String> {
    let all: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
    String::from_utf8(all)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

fn chunks(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn chat(model: &str, stream: bool, usage: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": usage},
           "messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "tell me about spot GPUs please"}]})
}

#[tokio::test]
async fn streams_arrive_chunk_by_chunk_and_match_the_plain_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _clock) = boot(dir.path()).await;
    let plain: Value = client()
        .post_json(
            &format!("{}/chat/completions", h.hosted_base_url),
            None,
            &chat("gpt-4o-mini", false, false),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let want = plain["choices"][0]["message"]["content"].as_str().unwrap();

    let (status, mut body, _t) = open(
        &h,
        "/hosted/v1/chat/completions",
        &[],
        &chat("gpt-4o-mini", true, true),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (fr, broken) = frames(&mut body).await;
    assert!(!broken);
    assert!(fr.len() > 5, "one frame per event, got {} frames", fr.len());
    let ev = events(&fr);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let ch = chunks(&ev);
    assert!(ch.iter().all(|c| c["object"] == "chat.completion.chunk"
        && c["model"] == "gpt-4o-mini"
        && c["id"] == ch[0]["id"]));
    assert_eq!(ch[0]["choices"][0]["delta"]["role"], "assistant");
    let got: String = ch
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(got, want);
    let usage = ch.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
    assert_eq!(plain["usage"]["prompt_tokens"].as_u64(), Some(8));
    assert_eq!(ch[ch.len() - 2]["choices"][0]["finish_reason"], "stop");

    // Without include_usage there is no usage chunk.
    let (_, mut body, _t) = open(
        &h,
        "/hosted/v1/chat/completions",
        &[],
        &chat("gpt-4o-mini", true, false),
    )
    .await;
    let ch = chunks(&events(&frames(&mut body).await.0));
    assert!(ch.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(ch.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // Completions stream `text_completion` chunks with the same text as the plain answer.
    let req = json!({"model": "gpt-4o-mini", "prompt": "a b c", "max_tokens": 4});
    let plain: Value = client()
        .post_json(&format!("{}/completions", h.hosted_base_url), None, &req)
        .await
        .unwrap()
        .json()
        .unwrap();
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (_, mut body, _t) = open(&h, "/hosted/v1/completions", &[], &sreq).await;
    let (fr, _) = frames(&mut body).await;
    assert!(fr.len() > 1);
    let ch = chunks(&events(&fr));
    let text: String = ch
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    assert_eq!(text, "This is a simulated");
    assert_eq!(ch.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert!(ch.iter().all(|c| c["object"] == "text_completion"));
    h.shutdown().await;
}

#[tokio::test]
async fn embeddings_have_openai_shape_and_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (h, clock) = boot(dir.path()).await;
    let c = client();
    let url = format!("{}/embeddings", h.hosted_base_url);
    let one: Value = c
        .post_json(
            &url,
            None,
            &json!({"model": "text-embedding-3-small", "input": "hello big world"}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], "text-embedding-3-small");
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["index"], 0);
    assert_eq!(
        one["data"][0]["embedding"].as_array().map(Vec::len),
        Some(8)
    );
    assert_eq!(one["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let many: Value = c
        .post_json(
            &url,
            None,
            &json!({"model": "text-embedding-3-small", "input": ["x y", "hello big world"]}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(many["data"][1]["index"], 1);
    assert_eq!(many["data"][1]["embedding"], one["data"][0]["embedding"]);
    assert_ne!(many["data"][0]["embedding"], one["data"][0]["embedding"]);
    assert_eq!(many["usage"]["prompt_tokens"], 5);
    // A chat model does not embed on the hosted upstream.
    let r = c
        .post_json(&url, None, &json!({"model": "gpt-4o-mini", "input": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A model instance embeds with its one model, the same vectors.
    let ep = model_instance(&h, &clock, "nimbus", &[]).await;
    let mine: Value = c
        .post_json(
            &format!("{ep}/embeddings"),
            None,
            &json!({"model": "my/model", "input": ["hello big world"]}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(mine["data"][0]["embedding"], one["data"][0]["embedding"]);
    let models: Value = c
        .get(&format!("{ep}/models"), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        models["data"],
        json!([{"id": "my/model", "object": "model", "created": (T0 + 120_000) / 1000, "owned_by": "spotd-sandbox"}])
    );
    h.shutdown().await;
}

/// A model instance started with a deployment key answers only that key, as vLLM
/// does with `VLLM_API_KEY`; one started without a key answers anyone.
#[tokio::test]
async fn a_model_server_answers_only_its_deployment_key() {
    let dir = tempfile::tempdir().unwrap();
    let (h, clock) = boot(dir.path()).await;
    let c = client();
    let ep = model_instance(
        &h,
        &clock,
        "strato",
        &[(crate::inference::DEPLOYMENT_KEY_ENV, "dep-key-1")],
    )
    .await;
    let models = format!("{ep}/models");
    for (key, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
        (Some("dep-key-1"), StatusCode::OK),
    ] {
        let r = c.get(&models, key).await.unwrap();
        assert_eq!(r.status, want, "key {key:?}");
    }
    let chat = format!("{ep}/chat/completions");
    let body = json!({"model": "my/model", "messages": [{"role": "user", "content": "hi"}]});
    let r = c.post_json(&chat, None, &body).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c.post_json(&chat, Some("dep-key-1"), &body).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    h.shutdown().await;
}

/// Creates a `my/model` instance on `cloud` with `env`, moves the clock past its
/// loading, and answers its OpenAI base URL.
async fn model_instance(
    h: &SandboxHandle,
    clock: &Clock,
    cloud: &str,
    env: &[(&str, &str)],
) -> String {
    let req = CreateInstance {
        offer_id: fixture_offer(cloud),
        label: format!("rnt_{cloud}"),
        model: Some("my/model".into()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let i: Instance = client()
        .post_json(
            &format!("{}/instances", h.cloud_base_url(cloud)),
            None,
            &req,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    clock.advance(120_000);
    format!("{}/instances/{}/v1", h.cloud_base_url(cloud), i.id)
}

/// An offer of `cloud` with a GPU big enough for any test model.
fn fixture_offer(cloud: &str) -> String {
    let cats = catalog::load().unwrap();
    let cat = cats.iter().find(|c| c.name == cloud).unwrap();
    cat.offers
        .iter()
        .find(|o| o.available >= 1)
        .unwrap()
        .id
        .clone()
}

#[tokio::test]
async fn fault_injection_fails_delays_and_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _clock) = boot(dir.path()).await;
    let c = client();
    let base = &h.hosted_base_url;

    // `-fail` models answer 500 in OpenAI's error shape, on every route.
    for (path, body) in [
        ("chat/completions", chat("gpt-4o-mini-fail", false, false)),
        ("completions", json!({"model": "x-fail", "prompt": "p"})),
        ("embeddings", json!({"model": "e-fail", "input": "p"})),
    ] {
        let r = c
            .post_json(&format!("{base}/{path}"), None, &body)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["type"], "server_error", "{path}");
        assert!(v["error"]["message"].is_string());
    }

    // `x-sandbox-delay-ms` holds the answer: a short-timeout client gives up.
    let body = serde_json::to_vec(&chat("gpt-4o-mini", false, false)).unwrap();
    let url = format!("{base}/chat/completions");
    let impatient = HttpClient::new(Duration::from_millis(150));
    let r = impatient
        .send(
            hyper::Method::POST,
            &url,
            None,
            &[("x-sandbox-delay-ms", "1500")],
            Some(body.clone()),
        )
        .await;
    assert!(matches!(r, Err(HttpError::Timeout(_))), "{r:?}");
    let t = Instant::now();
    let r = c
        .send(
            hyper::Method::POST,
            &url,
            None,
            &[("x-sandbox-delay-ms", "300")],
            Some(body.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    for bad in ["30001", "soon", "-1"] {
        let r = c
            .send(
                hyper::Method::POST,
                &url,
                None,
                &[("x-sandbox-delay-ms", bad)],
                Some(body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // `x-sandbox-cut-after: 3`: three content chunks, then a broken connection, no [DONE].
    let (status, mut stream, _t) = open(
        &h,
        "/hosted/v1/chat/completions",
        &[("x-sandbox-cut-after", "3")],
        &chat("gpt-4o-mini", true, true),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (fr, broken) = frames(&mut stream).await;
    assert!(broken, "the stream must end in a broken connection");
    let ev = events(&fr);
    assert!(!ev.iter().any(|e| e == "[DONE]"));
    let ch = chunks(&ev);
    let content: Vec<&str> = ch
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(content, ["This", " is", " a"]);
    assert!(ch.iter().all(|c| c["usage"].is_null()));
    // Past the answer's length the stream simply completes.
    let (_, mut stream, _t) = open(
        &h,
        "/hosted/v1/chat/completions",
        &[("x-sandbox-cut-after", "1000")],
        &chat("gpt-4o-mini", true, false),
    )
    .await;
    let (fr, broken) = frames(&mut stream).await;
    assert!(!broken);
    assert_eq!(events(&fr).last().map(String::as_str), Some("[DONE]"));
    h.shutdown().await;
}

#[tokio::test]
async fn a_client_hanging_up_mid_stream_stops_the_producer() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _clock) = boot(dir.path()).await;
    // 200 ms between ~20 events: the whole stream would take about 4 s.
    let (status, mut body, conn) = open(
        &h,
        "/hosted/v1/chat/completions",
        &[("x-sandbox-chunk-delay-ms", "200")],
        &chat("gpt-4o-mini", true, true),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        assert!(body.frame().await.unwrap().is_ok());
    }
    assert_eq!(h.live_streams(), 1);
    let hung_up = Instant::now();
    drop(body);
    conn.abort();
    while h.live_streams() > 0 {
        assert!(
            hung_up.elapsed() < Duration::from_millis(1500),
            "the producer kept running after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server is fine: the next plain and streamed requests work.
    let r = client()
        .post_json(
            &format!("{}/chat/completions", h.hosted_base_url),
            None,
            &chat("gpt-4o-mini", false, false),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let (_, mut body, _t) = open(
        &h,
        "/hosted/v1/chat/completions",
        &[],
        &chat("gpt-4o-mini", true, false),
    )
    .await;
    let (fr, broken) = frames(&mut body).await;
    assert!(!broken);
    assert_eq!(events(&fr).last().map(String::as_str), Some("[DONE]"));
    h.shutdown().await;
}
