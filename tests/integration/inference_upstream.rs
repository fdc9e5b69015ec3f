//! Upstream failures and streams, with hand-rolled loopback upstreams: a dead upstream
//! is a 502, a silent one a 504, a 5xx a 502, none charged; a stream cut midway is
//! billed for what was delivered; a client that hangs up cancels the upstream request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{usd, Daemon};
use hyper::Method;
use serde_json::json;
use spotd::money::Usd;

/// Reads one HTTP request's head and body (Content-Length only).
fn read_request(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// An upstream that answers every connection with `f`.
fn upstream(f: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(f);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || f(s));
        }
    });
    format!("http://{addr}/v1")
}

fn chunk(s: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(s, "{:x}\r\n{data}\r\n", data.len())?;
    s.flush()
}

fn sse(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

fn config(dead: &str, silent: &str, five: &str, cut: &str, slow: &str, keyed: &str) -> String {
    let mut s = String::from("[deployments]\nupstream_timeout_seconds = 2\n");
    s.push_str(&format!(
        "[[upstreams]]\nname = \"keyed\"\nbase_url = \"{keyed}\"\napi_key_env = \"UPSTREAM_TEST_KEY\"\nmodels = [\"keyed-model\"]\n"
    ));
    for (name, url) in [
        ("dead", dead),
        ("silent", silent),
        ("five", five),
        ("cut", cut),
        ("slow", slow),
    ] {
        s.push_str(&format!(
            "[[upstreams]]\nname = \"{name}\"\nbase_url = \"{url}\"\nmodels = [\"{name}-model\"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n"
        ));
    }
    s
}

fn body(model: &str, stream: bool) -> Vec<u8> {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "four words of prompt"}]})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_504_and_stream_cuts_bill_what_was_delivered() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("http://{a}/v1")
    };
    let silent = upstream(|mut s| {
        read_request(&mut s);
        std::thread::sleep(Duration::from_secs(10));
    });
    let five = upstream(|mut s| {
        read_request(&mut s);
        let b = r#"{"error":{"message":"upstream exploded","type":"server_error"}}"#;
        let _ = write!(s, "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len());
    });
    // Three content chunks, then the connection drops: no usage, no [DONE].
    let cut = upstream(|mut s| {
        read_request(&mut s);
        let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        for w in ["one", " two", " three"] {
            let _ = chunk(&mut s, &sse(w));
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    // Streams forever, one chunk every 50 ms, until writing fails (the peer left).
    let upstream_saw_hangup = Arc::new(AtomicBool::new(false));
    let flag = upstream_saw_hangup.clone();
    let slow = upstream(move |mut s| {
        read_request(&mut s);
        let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if chunk(&mut s, &sse("tick")).is_err() {
                flag.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Answers with the Authorization header it received, as the completion text.
    let keyed = upstream(|mut s| {
        let req = read_request(&mut s);
        let auth = req
            .lines()
            .find_map(|l| {
                l.strip_prefix("authorization: ")
                    .or_else(|| l.strip_prefix("Authorization: "))
            })
            .unwrap_or("none")
            .to_string();
        let b = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "keyed-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": auth}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        .to_string();
        let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len());
    });
    // The upstream's key is in the daemon's environment only.
    let d = Daemon::in_process_env(
        &config(&dead, &silent, &five, &cut, &slow, &keyed),
        &[("UPSTREAM_TEST_KEY", "upstream-secret-123")],
    )
    .await;
    let key = d.demo_key.clone();
    let post = |m: &'static str, stream: bool| {
        d.call_h(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            &[],
            Some(body(m, stream)),
        )
    };
    let r = post("keyed-model", false).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        seen, "Bearer upstream-secret-123",
        "the upstream gets its own key, never the caller's"
    );
    let (bal0, _, _) = d.assert_books_balance(&key).await;

    let r = post("dead-model", false).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "upstream_error");
    let t0 = Instant::now();
    let r = post("silent-model", false).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "a silent upstream must not hang the caller"
    );
    let r = post("five-model", false).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));
    let (bal, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, bal0, "no charge for requests that produced nothing");

    // A stream cut after three chunks: billed for 4 prompt words + 3 delivered chunks at
    // $1/Mtok in and $2/Mtok out = 4 + 6 micro-USD.
    // The client sees the stream end abruptly too (an incomplete chunked body).
    let c = spotd::http_client::HttpClient::new(Duration::from_secs(10));
    let r = c
        .send(
            Method::POST,
            &format!("{}/v1/chat/completions", d.url),
            Some(&key),
            &[],
            Some(body("cut-model", true)),
        )
        .await;
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|r| r.status == 200),
        "{r:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let charge = loop {
        let c: Vec<_> = d
            .ledger(&key)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "charge" && e["request_id"].is_string())
            .collect();
        if let Some(c) = c.first() {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "cut stream never billed");
        d.pass(100).await;
    };
    assert_eq!(usd(&charge["amount"]), Usd(-10), "{charge}");
    assert!(charge["note"].as_str().unwrap().contains("cut"), "{charge}");

    // A client that hangs up mid-stream: spotd drops the upstream request too.
    {
        let addr = d.url.trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&addr).unwrap();
        let b = body("slow-model", true);
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            b.len()
        )
        .unwrap();
        s.write_all(&b).unwrap();
        let mut first = [0u8; 512];
        let n = s.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
        drop(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !upstream_saw_hangup.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream request was not cancelled"
        );
        d.pass(50).await;
    }
    d.assert_books_balance(&key).await;
}
