//! A loopback mock of a provider API for the adapter tests: hyper on 127.0.0.1:0,
//! answering with a handler over the parsed request, recording every request.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub auth: Option<String>,
    pub body: Value,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

pub fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.into(),
        delay: None,
    }
}

pub fn json(status: u16, v: &Value) -> Reply {
    reply(status, v.to_string())
}

pub type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

pub struct Mock {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Req>>>,
}

impl Mock {
    pub fn requests(&self, method: &str, path_prefix: &str) -> Vec<Req> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }
}

pub async fn start(handler: Handler) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Req>>> = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let r = Req {
                            method,
                            path,
                            auth,
                            body,
                        };
                        seen.lock().unwrap().push(r.clone());
                        let rep = handler(&r);
                        if let Some(d) = rep.delay {
                            tokio::time::sleep(d).await;
                        }
                        let mut resp = Response::builder().status(rep.status);
                        for (k, v) in rep.headers {
                            resp = resp.header(k, v);
                        }
                        Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(rep.body))).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Mock {
        base: format!("http://{addr}"),
        seen,
    }
}

pub fn fixture(kind: &str, name: &str) -> String {
    let p = format!(
        "{}/fixtures/providers/{kind}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

pub fn fixture_json(kind: &str, name: &str) -> Value {
    serde_json::from_str(&fixture(kind, name)).unwrap()
}

/// Every error-path handler shared by the kinds: the path prefix picks the behaviour.
pub fn error_route(r: &Req) -> Option<Reply> {
    let p = r.path.as_str();
    if p.starts_with("/unauth") {
        return Some(reply(401, r#"{"error":"invalid api key"}"#));
    }
    if p.starts_with("/limited-ra") {
        let mut rep = reply(429, "API requests too frequent");
        rep.headers.push(("retry-after", "17".into()));
        return Some(rep);
    }
    if p.starts_with("/limited") {
        return Some(reply(429, "API requests too frequent"));
    }
    if p.starts_with("/garbage") {
        return Some(reply(200, r#"{"offers": [ {"id": 1,"#));
    }
    if p.starts_with("/down") {
        return Some(reply(503, "<html>upstream down</html>"));
    }
    if p.starts_with("/slow") {
        let mut rep = reply(200, "{}");
        rep.delay = Some(Duration::from_secs(2));
        return Some(rep);
    }
    None
}

use spotd::providers::{CreateInstance, Provider, ProviderError};

/// Runs every error path against a provider built by `make(base_url, timeout)` on a
/// mock that answers with [`error_route`] (`mock` must route those prefixes).
pub async fn check_error_paths(
    mock: &Mock,
    make: impl Fn(String, Duration) -> Arc<dyn Provider>,
    create: CreateInstance,
) {
    let at = |prefix: &str, t: Duration| make(format!("{}/{prefix}", mock.base), t);
    let quick = Duration::from_secs(5);
    let p = at("unauth", quick);
    assert!(
        matches!(p.list_offers().await, Err(ProviderError::Unauthorized(m)) if m.contains("invalid api key"))
    );
    assert!(matches!(
        p.create_instance(&create).await,
        Err(ProviderError::Unauthorized(_))
    ));
    assert_eq!(
        at("limited-ra", quick).list_offers().await,
        Err(ProviderError::RateLimited {
            retry_after_secs: Some(17)
        })
    );
    assert_eq!(
        at("limited", quick).list_instances().await,
        Err(ProviderError::RateLimited {
            retry_after_secs: None
        })
    );
    let g = at("garbage", quick);
    assert!(matches!(
        g.list_offers().await,
        Err(ProviderError::Unavailable(_))
    ));
    assert!(matches!(
        g.list_instances().await,
        Err(ProviderError::Unavailable(_))
    ));
    assert!(matches!(
        g.get_instance("1").await,
        Err(ProviderError::Unavailable(_))
    ));
    let d = at("down", quick);
    assert!(
        matches!(d.list_offers().await, Err(ProviderError::Unavailable(m)) if m.contains("503"))
    );
    assert!(matches!(
        d.terminate("1").await,
        Err(ProviderError::Unavailable(_))
    ));
    // A provider slower than the client timeout: every call gives up, none hangs.
    let s = at("slow", Duration::from_millis(300));
    let timed_out = |r: Result<(), ProviderError>| matches!(r, Err(ProviderError::Unavailable(m)) if m.contains("timed out"));
    assert!(timed_out(s.list_offers().await.map(|_| ())));
    assert!(timed_out(s.create_instance(&create).await.map(|_| ())));
    assert!(timed_out(s.get_instance("1").await.map(|_| ())));
    assert!(timed_out(s.list_instances().await.map(|_| ())));
    assert!(timed_out(s.terminate("1").await.map(|_| ())));
}

/// What spotd's rent path does on an unknown outcome (`rentals::rent`): after
/// `Unavailable` from create, list instances and adopt the one labelled with the
/// rental id. Returns the adopted instance id.
pub async fn rent_like_spotd(p: &dyn Provider, create: &CreateInstance) -> Option<String> {
    match p.create_instance(create).await {
        Ok(i) => Some(i.id),
        Err(ProviderError::Unavailable(_)) => p
            .list_instances()
            .await
            .ok()?
            .into_iter()
            .find(|i| i.label == create.label)
            .map(|i| i.id),
        Err(_) => None,
    }
}
