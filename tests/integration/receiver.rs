//! A webhook receiver for the tests: hyper on 127.0.0.1, recording every request, and
//! a Standard Webhooks verifier that shares no code with spotd's signer (its own
//! base64, ring's HMAC).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use spotd::clock::Clock;
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// The daemon's clock when it arrived (in-process daemons).
    pub at: Option<i64>,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or("").to_string()
    }
}

/// A webhook receiver on 127.0.0.1: records every request and answers the statuses
/// queued in `answers`, then 200. `stop` closes the port and every open connection.
pub struct Receiver {
    pub port: u16,
    seen: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start(port: u16, clock: Option<Clock>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Got>>> = Arc::default();
        let answers: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let stop = CancellationToken::new();
        let (seen2, answers2, stop2) = (seen.clone(), answers.clone(), stop.clone());
        tokio::spawn(async move {
            // Dropping the set when stopped aborts the open connections too.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => return },
                };
                let (seen, answers, clock) = (seen2.clone(), answers2.clone(), clock.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, answers, clock) = (seen.clone(), answers.clone(), clock.clone());
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (id, timestamp, signature) = (
                                h("webhook-id"),
                                h("webhook-timestamp"),
                                h("webhook-signature"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push(Got {
                                id,
                                timestamp,
                                signature,
                                body: body.to_vec(),
                                at: clock.as_ref().map(Clock::now),
                            });
                            let status = answers.lock().unwrap().pop_front().unwrap_or(200);
                            let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            port,
            seen,
            answers,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/spotd", self.port)
    }

    pub fn got(&self) -> Vec<Got> {
        self.seen.lock().unwrap().clone()
    }

    pub fn answer(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Standard base64 decoding, written here so the check does not share spotd's code.
pub fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Checks a request the way a receiver following the Standard Webhooks spec does: the
/// key is the base64 after `whsec_`, the signature an HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, one of the space-separated `v1,` entries.
pub fn verify(secret: &str, g: &Got) {
    let key = b64decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"));
    assert_eq!(key.len(), 32, "32 random bytes");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = format!("{}.{}.", g.id, g.timestamp).into_bytes();
    signed.extend_from_slice(&g.body);
    let ok = g.signature.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .is_some_and(|sig| ring::hmac::verify(&key, &signed, &b64decode(sig)).is_ok())
    });
    assert!(ok, "the signature does not verify: {g:?}");
    assert!(g.timestamp.parse::<i64>().is_ok(), "Unix seconds: {g:?}");
    assert_eq!(g.json()["id"], g.id.as_str(), "webhook-id is the event id");
    assert!(g.id.starts_with("evt_"), "{g:?}");
}
