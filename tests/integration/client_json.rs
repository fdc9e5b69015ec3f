//! JSON and HTTP as everyday clients write them: money in exponent form (Python's
//! `json` writes 0.00005 as `5e-05`), embeddings with token arrays and `dimensions`,
//! account names counted in characters, `HEAD`, a wrong method (405 + Allow), headers
//! too large (431 with a body), and a made-up offer id (404) against one that is gone
//! (409). Each bad input gets an OpenAI-shaped error and changes nothing.

use std::io::{Read, Write};

use hyper::Method;
use serde_json::{json, Value};

use crate::common::{cheapest, usd, Daemon};
use spotd::money::Usd;

async fn raw_post(d: &Daemon, path: &str, key: &str, body: &str) -> crate::common::Resp {
    d.call_h(
        Method::POST,
        path,
        Some(key),
        &[("content-type", "application/json")],
        Some(body.as_bytes().to_vec()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_in_exponent_form_is_exact_or_refused() {
    let d = Daemon::in_process("").await;
    let admin = d.admin.clone();
    let (acct, key) = d.account("py", "1").await;
    let path = format!("/admin/v1/accounts/{acct}/credits");
    // What `json.dumps({"amount": 0.00005})` sends.
    let r = raw_post(&d, &path, &admin, r#"{"amount": 5e-05}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(usd(&r.body["entry"]["amount"]), Usd(50));
    let (bal, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, Usd(1_000_050));
    let r = raw_post(&d, &path, &admin, r#"{"amount": 2.5E+1}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(usd(&r.body["entry"]["amount"]), Usd(25_000_000));

    // Past the micro-dollar: a 400 that says so, and nothing credited.
    let entries = d.ledger(&key).await.len();
    let r = raw_post(&d, &path, &admin, r#"{"amount": 1e-07}"#).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1e-07") && msg.contains("more than 6 decimals"),
        "{msg}"
    );
    assert_eq!(d.ledger(&key).await.len(), entries);
    let (bal, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, Usd(26_000_050));

    // A price cap in exponent form rents as the decimal would.
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let cap = format!("{:e}", 10.0f64); // "1e1"
    let body = format!(r#"{{"gpu": "T4", "max_price_per_hour": {cap}}}"#);
    let r = raw_post(&d, "/v1/gpus/rentals", &key, &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["offer"]["id"], offer["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_take_token_arrays_and_dimensions() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let embed = |body: Value| {
        let d = &d;
        let key = key.clone();
        async move { d.post("/v1/embeddings", &key, body).await }
    };
    let m = "text-embedding-3-small";
    let one = embed(json!({"model": m, "input": [1, 2, 3]})).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(one.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(one.body["usage"]["prompt_tokens"], 3);
    let many = embed(json!({"model": m, "input": [[1, 2, 3], [4]]})).await;
    assert_eq!(many.status, 200, "{:?}", many.body);
    assert_eq!(
        many.body["data"][0]["embedding"],
        one.body["data"][0]["embedding"]
    );
    assert_eq!(many.body["data"][1]["index"], 1);
    let full = embed(json!({"model": m, "input": "hello world"})).await;
    let short = embed(json!({"model": m, "input": "hello world", "dimensions": 4})).await;
    assert_eq!(short.status, 200, "{:?}", short.body);
    let (full, short) = (
        full.body["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .clone(),
        short.body["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .clone(),
    );
    assert_eq!(short.len(), 4);
    assert_eq!(short[..], full[..4], "dimensions keeps the first values");

    let entries = d.ledger(&key).await.len();
    for (body, param) in [
        (
            json!({"model": m, "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": m, "input": "x", "dimensions": "4"}),
            "dimensions",
        ),
        (json!({"model": m, "input": [[1], []]}), "input"),
        (json!({"model": m, "input": [1, "a"]}), "input"),
    ] {
        let r = embed(body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{body}");
    }
    // More dimensions than the model has: the model server's 400, passed on, unbilled.
    let r = embed(json!({"model": m, "input": "x", "dimensions": 4096})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("dimensions"));
    assert_eq!(
        d.ledger(&key).await.len(),
        entries,
        "no bad request was charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_names_are_limited_in_characters() {
    let d = Daemon::in_process("").await;
    let admin = d.admin.clone();
    let name: String = "é".repeat(100); // 200 bytes, 100 characters
    let r = d
        .post(
            "/admin/v1/accounts",
            &admin,
            json!({"name": name, "credit": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["name"], name.as_str());
    let before = d.get("/admin/v1/accounts", &admin).await.body["data"]
        .as_array()
        .unwrap()
        .len();
    let r = d
        .post(
            "/admin/v1/accounts",
            &admin,
            json!({"name": "é".repeat(101), "credit": 1}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["param"], "name");
    let after = d.get("/admin/v1/accounts", &admin).await.body["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_wrong_methods_and_large_headers_get_proper_answers() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let r = d.call(Method::HEAD, "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Value::Null, "no body");
    let r = d.call(Method::HEAD, "/v1/credits", Some(&key), None).await;
    assert_eq!(r.status, 200);

    // A known path, a wrong method: 405 with Allow, in the OpenAI shape.
    let r = d.call(Method::PUT, "/v1/credits", Some(&key), None).await;
    assert_eq!(r.status, 405, "{:?}", r.body);
    assert_eq!(r.headers["allow"], "GET, HEAD");
    assert_eq!(r.body["error"]["code"], "method_not_allowed");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    let r = d.call(Method::POST, "/healthz", None, None).await;
    assert_eq!(r.status, 405, "{:?}", r.body);
    assert_eq!(r.headers["allow"], "GET, HEAD");
    let r = d
        .call(Method::PATCH, "/v1/gpus/rentals/rnt_x", Some(&key), None)
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD, DELETE");
    // Still no probing of the API's paths without a key.
    let r = d.call(Method::PUT, "/v1/credits", None, None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    // An unknown path stays a 404.
    let r = d.call(Method::GET, "/v1/nope", Some(&key), None).await;
    assert_eq!(r.status, 404);

    // Too many headers: hyper's 431, with a body saying what was wrong.
    let addr = d.url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut req = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
        for i in 0..200 {
            req.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["error"]["code"], "headers_too_large");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // The server still serves.
    assert_eq!(
        d.call(Method::GET, "/healthz", None, None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_offer_is_404_and_a_vanished_one_409() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let (bal, _, _) = d.assert_books_balance(&key).await;
    let offer = cheapest(&d, &key, "").await;
    let provider = offer["provider"].as_str().unwrap().to_string();
    let id = offer["id"].as_str().unwrap().to_string();
    for made_up in [format!("{provider}:no-such-offer"), "nowhere:1".to_string()] {
        let r = d
            .post("/v1/gpus/rentals", &key, json!({"offer_id": made_up}))
            .await;
        assert_eq!(r.status, 404, "{made_up}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "offer_not_found");
    }

    // The provider fails until its last offers are dropped (300 s stale in sandbox mode).
    let base = d.cloud_base(&provider).await;
    let f = d
        .raw(
            Method::POST,
            &format!("{base}/_control/fail"),
            Some(json!({"offers": true})),
        )
        .await;
    assert_eq!(f.status, 200, "{:?}", f.body);
    d.advance(330).await;
    assert_eq!(
        d.get(&format!("/v1/gpus/offers/{id}"), &key).await.status,
        404,
        "the offer is gone"
    );
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": id}))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "offer_unavailable");
    let (after, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(
        (after, held),
        (bal, Usd::ZERO),
        "nothing rented, nothing held"
    );
}
