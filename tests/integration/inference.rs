//! The OpenAI-compatible API against the real daemon and its sandbox: availability
//! tiers, hosted chat billed per token (plain and streamed), unknown models, cold start
//! (202 + Retry-After, then ready, then 200, then reaped, then cold again),
//! `Prefer: wait`, no funds, one deployment for concurrent cold requests, redeploy
//! after a preemption.

use std::time::{Duration, Instant};

use crate::common::{usd, Daemon};
use hyper::Method;
use serde_json::{json, Value};
use spotd::money::Usd;

const COLD: &str = "meta-llama/Llama-3.1-8B-Instruct";
const FAST_MODELS: &str =
    "[sandbox]\nmodel_load_seconds = 1\n[deployments]\nidle_timeout_seconds = 3\n\
    [[models]]\nid = \"giant/needs-a-datacenter\"\nmin_vram_gb = 100000\n";

/// A plain (not streamed) chat request to `model` with extra `headers`.
async fn post_chat(
    d: &Daemon,
    key: &str,
    model: &str,
    headers: &[(&str, &str)],
) -> crate::common::Resp {
    d.call_h(
        Method::POST,
        "/v1/chat/completions",
        Some(key),
        headers,
        Some(chat(model, false)),
    )
    .await
}

fn chat(model: &str, stream: bool) -> Vec<u8> {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "say something nice about spot GPUs"}]})
    .to_string()
    .into_bytes()
}

async fn models(d: &Daemon, key: &str) -> Vec<Value> {
    let r = d.get("/v1/models", key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "list");
    r.body["data"].as_array().unwrap().clone()
}

fn availability(list: &[Value], id: &str) -> String {
    list.iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed"))["availability"]
        .as_str()
        .unwrap()
        .to_string()
}

/// 15e-8 USD per gpt-4o-mini input token and 60e-8 per output token, half up.
fn mini_cost(prompt: u64, completion: u64) -> Usd {
    Usd(((prompt as i128 * 150_000 + completion as i128 * 600_000 + 500_000) / 1_000_000) as i64)
}

async fn request_charges(d: &Daemon, key: &str) -> Vec<Value> {
    d.ledger(key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "charge" && e["request_id"].is_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_models_are_instant_and_billed_per_token() {
    let d = Daemon::in_process(FAST_MODELS).await;
    let key = d.demo_key.clone();
    let list = models(&d, &key).await;
    assert_eq!(availability(&list, "gpt-4o-mini"), "instant");
    assert_eq!(availability(&list, COLD), "cold");
    let cold_models = list.iter().filter(|m| m["availability"] == "cold").count();
    assert!(cold_models >= 4, "{list:?}");

    // Plain.
    let r = post_chat(&d, &key, "gpt-4o-mini", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    let p = r.body["usage"]["prompt_tokens"].as_u64().unwrap();
    let c = r.body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(p > 0 && c > 0);
    let charges = request_charges(&d, &key).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(usd(&charges[0]["amount"]), -mini_cost(p, c));
    let rid = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(
        charges[0]["request_id"], rid,
        "the charge names its request"
    );

    // Streamed: spotd asks for usage and bills from the final chunk, which the client
    // did not ask for and does not see.
    let s = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(chat("gpt-4o-mini", true)),
        )
        .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let text = s.body.as_str().unwrap().to_string();
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let mut content = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(
            !v["choices"].as_array().unwrap().is_empty(),
            "usage chunk leaked to a client that did not ask for it: {line}"
        );
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(t);
        }
    }
    assert_eq!(
        content,
        r.body["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // The stream was billed like the plain answer (same request, same usage).
    let deadline = Instant::now() + Duration::from_secs(20);
    while request_charges(&d, &key).await.len() < 2 {
        assert!(Instant::now() < deadline, "stream never billed");
        d.pass(100).await;
    }
    let charges = request_charges(&d, &key).await;
    assert_eq!(usd(&charges[0]["amount"]), -mini_cost(p, c));

    // With include_usage the client gets the usage chunk.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let s = d
        .call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert!(
        s.body.as_str().unwrap().contains("\"usage\":{"),
        "{:?}",
        s.body
    );

    // Streams are charged when they end, a moment after the client has read them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while request_charges(&d, &key).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "include_usage stream never billed"
        );
        d.pass(100).await;
    }
    // Unknown model: 404 model_not_found, nothing charged.
    let before = request_charges(&d, &key).await.len();
    assert_eq!(before, 3);
    let u = post_chat(&d, &key, "no-such-model", &[]).await;
    assert_eq!(u.status, 404, "{:?}", u.body);
    assert_eq!(u.err_code(), "model_not_found");
    // Bad input: 400, never a 500.
    for bad in [
        &b"{"[..],
        b"[]",
        b"{\"messages\": []}",
        b"{\"model\": 5}",
        b"{\"model\": \"gpt-4o-mini\", \"stream\": \"yes\"}",
    ] {
        let r = d
            .call_h(
                Method::POST,
                "/v1/chat/completions",
                Some(&key),
                &[],
                Some(bad.to_vec()),
            )
            .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
    }
    assert_eq!(
        request_charges(&d, &key).await.len(),
        before,
        "errors cost nothing"
    );
    d.assert_books_balance(&key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_then_ready_then_reaped_then_cold_again() {
    let d = Daemon::in_process(FAST_MODELS).await;
    let key = d.demo_key.clone();
    // Many requests at once for one cold model start one deployment.
    let mut hs = Vec::new();
    for _ in 0..6 {
        let url = d.url.clone();
        let key = key.clone();
        hs.push(tokio::spawn(async move {
            let c = spotd::http_client::HttpClient::new(Duration::from_secs(30));
            c.send(
                Method::POST,
                &format!("{url}/v1/chat/completions"),
                Some(&key),
                &[],
                Some(chat(COLD, false)),
            )
            .await
            .unwrap()
        }));
    }
    for h in hs {
        let r = h.await.unwrap();
        assert_eq!(
            r.status.as_u16(),
            202,
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(ra >= 1);
        let v: Value = r.json().unwrap();
        assert_eq!(v["status"], "deploying");
        assert_eq!(v["type"], "model_deploying");
        assert!(v["estimated_ready_seconds"].as_u64().unwrap() >= 1);
        assert!(v["message"].as_str().unwrap().contains(COLD));
    }
    let rentals = d.get("/v1/gpus/rentals", &key).await;
    let deps: Vec<&Value> = rentals.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == COLD)
        .collect();
    assert_eq!(
        deps.len(),
        1,
        "one deployment however many requests: {deps:?}"
    );
    let dep_id = deps[0]["id"].as_str().unwrap().to_string();
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert!(held > Usd::ZERO, "the cold start placed a hold");

    // While deploying, /v1/models says so with an ETA, and prices the machine the
    // caller pays for: its deployment's, at the locked price.
    let list = models(&d, &key).await;
    let m = list.iter().find(|m| m["id"] == COLD).unwrap();
    assert_eq!(
        m["pricing"]["usd_per_hour"], deps[0]["price_per_hour"],
        "{m}"
    );
    assert_eq!(
        m["pricing"]["gpu"],
        format!(
            "{} x {}",
            deps[0]["offer"]["gpu_count"],
            deps[0]["offer"]["gpu"].as_str().unwrap()
        )
    );
    if m["availability"] == "deploying" {
        assert!(m["estimated_deploy_seconds"].as_u64().is_some());
    }

    // Ready: 200 with the completion, served by the deployment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ok = loop {
        let r = post_chat(&d, &key, COLD, &[]).await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 202, "{:?}", r.body);
        assert!(Instant::now() < deadline, "never became ready\n{}", d.log());
        d.pass(500).await;
    };
    assert_eq!(ok.body["model"], COLD);
    assert_eq!(availability(&models(&d, &key).await, COLD), "instant");
    // Billed by GPU time, not per token.
    assert!(request_charges(&d, &key).await.is_empty());

    // Idle for 3 s: reaped with reason idle, and cold again.
    let gone = d
        .wait_rental(&key, &dep_id, 30, |r| {
            r["state"] == "terminated" || r["state"] == "terminating"
        })
        .await;
    assert_eq!(gone["termination_reason"], "idle", "{gone}");
    assert_eq!(availability(&models(&d, &key).await, COLD), "cold");
    d.wait_rental(&key, &dep_id, 20, |r| r["state"] == "terminated")
        .await;
    let (_, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_answers_with_the_completion_and_no_funds_is_402() {
    let d = Daemon::in_process(FAST_MODELS).await;
    let key = d.demo_key.clone();
    let r = post_chat(&d, &key, COLD, &[("Prefer", "wait=60")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    // A short wait on another cold model: the usual 202.
    let r = post_chat(
        &d,
        &key,
        "meta-llama/Llama-3.3-70B-Instruct",
        &[("Prefer", "wait=1")],
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    // No offer fits the model: 503 with a clear message, nothing rented.
    let r = post_chat(&d, &key, "giant/needs-a-datacenter", &[]).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("giant/needs-a-datacenter") && msg.contains("100000 GB"),
        "{msg}"
    );
    let rentals = d.get("/v1/gpus/rentals", &key).await;
    assert!(!rentals.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["model"] == "giant/needs-a-datacenter"));

    // No funds: 402, nothing rented, nothing held.
    let (_, poor) = d.account("poor", "0.000001").await;
    let r = post_chat(&d, &poor, COLD, &[]).await;
    assert_eq!(r.status, 402, "{:?}", r.body);
    assert_eq!(
        d.get("/v1/gpus/rentals", &poor).await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let (_, held, _) = d.assert_books_balance(&poor).await;
    assert_eq!(held, Usd::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_deployment_is_redeployed() {
    let d = Daemon::in_process(FAST_MODELS).await;
    let key = d.demo_key.clone();
    let admin = d.admin.clone();
    let r = post_chat(&d, &key, COLD, &[("Prefer", "wait=60")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rentals = d.get("/v1/gpus/rentals", &key).await;
    let dep = rentals.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == COLD)
        .unwrap()
        .clone();
    let dep_id = dep["id"].as_str().unwrap().to_string();
    let provider = dep["provider"].as_str().unwrap().to_string();
    let p = d.get("/admin/v1/providers", &admin).await;
    let base = p.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == provider.as_str())
        .unwrap()["base_url"]
        .as_str()
        .unwrap()
        .to_string();
    let c = spotd::http_client::HttpClient::new(Duration::from_secs(10));
    let insts: Value = c
        .get(&format!("{base}/instances"), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    let inst = insts["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == dep_id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pr = c
        .send(
            Method::POST,
            &format!("{base}/_control/preempt/{inst}"),
            None,
            &[],
            None,
        )
        .await
        .unwrap();
    assert!(
        pr.status.is_success(),
        "{:?}",
        String::from_utf8_lossy(&pr.body)
    );
    let old = d
        .wait_rental(&key, &dep_id, 20, |r| r["state"] == "interrupted")
        .await;
    assert_eq!(old["termination_reason"], "preempted");
    // A new deployment of the same model appears, and serves again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = d.get("/v1/gpus/rentals", &key).await;
        let fresh =
            l.body["data"].as_array().unwrap().iter().any(|r| {
                r["model"] == COLD && r["id"] != dep_id.as_str() && r["state"] != "failed"
            });
        if fresh {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no redeploy: {}\n{}",
            l.body,
            d.log()
        );
        d.pass(300).await;
    }
    let r = post_chat(&d, &key, COLD, &[("Prefer", "wait=60")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    d.assert_books_balance(&key).await;
}

/// A chat request to the cold model that waits for it (with an RFC 7240 parameter).
async fn wait(d: &Daemon, key: &str) -> crate::common::Resp {
    post_chat(d, key, COLD, &[("Prefer", "wait=60; handling=strict")]).await
}

/// After a restart the in-process sandbox clouds listen on a new port, so a running
/// deployment's instance has a new address: spotd takes it from the provider and the
/// model answers again, instead of staying "deploying" while billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_follows_its_new_address_after_a_restart() {
    let mut d = Daemon::in_process(FAST_MODELS).await;
    let key = d.demo_key.clone();
    let r = wait(&d, &key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let endpoint = |rentals: &Value| {
        rentals["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == COLD && r["state"] == "running")
            .map(|r| r["endpoint"].as_str().unwrap().to_string())
    };
    let before = endpoint(&d.get("/v1/gpus/rentals", &key).await.body).expect("running");
    d.restart_in_process().await;
    let r = wait(&d, &key).await;
    assert_eq!(r.status, 200, "{:?}\nlog:\n{}", r.body, d.log());
    let after = endpoint(&d.get("/v1/gpus/rentals", &key).await.body).expect("running");
    assert_ne!(before, after, "the sandbox listens on a new port");
    let rentals = d.get("/v1/gpus/rentals", &key).await;
    let deployments = rentals.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == COLD)
        .count();
    assert_eq!(deployments, 1, "the same deployment, not a new one");
}

/// Model ids with a slash work in the path as the OpenAI SDKs send them (unencoded);
/// the model list has the list shape of every other list; an empty query value is as
/// if absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ids_with_a_slash_and_empty_query_values() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let r = d.get(&format!("/v1/models/{COLD}"), &key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["id"], COLD);
    let enc = d
        .get("/v1/models/meta-llama%2FLlama-3.1-8B-Instruct", &key)
        .await;
    assert_eq!(enc.body["id"], COLD);
    let r = d.get("/v1/models/no-such/model", &key).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.err_code(), "model_not_found");
    let list = d.get("/v1/models", &key).await;
    assert!(
        list.body.get("next_cursor").is_some_and(Value::is_null),
        "{}",
        list.body
    );
    for path in [
        "/v1/credits/ledger?limit=",
        "/v1/gpus/rentals?limit=&cursor=",
    ] {
        let r = d.get(path, &key).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
    assert_eq!(d.get("/v1/credits/ledger?limit=0", &key).await.status, 400);
    // A chat model asked for embeddings: the hosted upstream's 404 says why, with a code.
    let r = d
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "gpt-4o-mini", "input": "x"}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.err_code(), "model_not_found");
}

/// Parallel hosted requests on a nearly empty account: each reserves its largest cost
/// before it is sent, so the ones that get an answer are all charged in full for their
/// usage, the others get 402, and available never goes below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_on_a_nearly_empty_account_are_never_answered_free() {
    let d = Daemon::in_process("[limits]\nrequests_per_second = 1000\nburst = 1000\n").await;
    let (_, key) = d.account("nearly-empty", "0.0001").await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "say something nice about spot GPUs"}]})
    .to_string();
    let calls = (0..20).map(|_| {
        d.call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(body.clone().into_bytes()),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    let charges = request_charges(&d, &key).await;
    let mut answered = 0;
    for r in &answers {
        match r.status {
            200 => {
                answered += 1;
                let id = r.headers["x-request-id"].to_str().unwrap();
                let u = &r.body["usage"];
                let cost = mini_cost(
                    u["prompt_tokens"].as_u64().unwrap(),
                    u["completion_tokens"].as_u64().unwrap(),
                );
                let c = charges
                    .iter()
                    .find(|c| c["request_id"] == id)
                    .unwrap_or_else(|| panic!("answered {id} was never charged"));
                assert_eq!(usd(&c["amount"]), -cost, "charged in full: {c}");
            }
            402 => assert_eq!(r.err_code(), "insufficient_credit", "{:?}", r.body),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert!(answered >= 1, "the first requests fit");
    assert!(answered < 20, "not all twenty fit in $0.0001");
    assert_eq!(
        charges.len(),
        answered,
        "one charge per answer, none for a 402"
    );
    let (_, _, avail) = d.assert_books_balance(&key).await;
    assert!(avail >= Usd::ZERO);
}
