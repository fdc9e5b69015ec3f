//! A small HTTP/1 client over hyper for JSON calls: providers, the CLI, tests.
//!
//! Every call has a timeout; bodies are read whole up to a limit. Proxying streams the
//! answer instead (`HttpClient::post_streaming` -> `Upstream`, a status and a stream
//! of body chunks, so the code that proxies never touches hyper types). Both `http://` (sandbox, mocks, loopback) and `https://` (the
//! real provider APIs) URLs work: TLS is rustls with the ring provider and the built-in
//! webpki roots, so a static binary needs no certificate store from the host.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest answer body read into memory (offer lists of big markets fit).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("unreadable JSON answer: {e}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("bad request: {0}")]
    Request(String),
}

impl HttpClient {
    pub fn new(timeout: Duration) -> HttpClient {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(timeout));
        conn.set_nodelay(true);
        // The TLS layer below decides per URL scheme; the TCP connector must let
        // https:// through to it.
        conn.enforce_http(false);
        // Only rustls' ring provider is compiled in, so the default config picks it.
        let conn = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        HttpClient { inner, timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request; `body` is JSON when given.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        extra_headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, HttpError> {
        let req = build_request(method, url, bearer, extra_headers, body)?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Transport(describe(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    /// POSTs `body` (JSON) and answers as soon as the response headers arrive (within
    /// `timeout`); the body streams from the returned [`Upstream`]. Dropping it cancels
    /// the request. For proxying.
    pub(crate) async fn post_streaming(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Upstream, HttpError> {
        self.streaming(Method::POST, url, bearer, Some(body), timeout)
            .await
    }

    /// A GET whose body streams (a backup download); see [`HttpClient::post_streaming`].
    pub(crate) async fn get_streaming(
        &self,
        url: &str,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<Upstream, HttpError> {
        self.streaming(Method::GET, url, bearer, None, timeout)
            .await
    }

    async fn streaming(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Upstream, HttpError> {
        let req = build_request(method, url, bearer, &[], body)?;
        match tokio::time::timeout(timeout, self.inner.request(req)).await {
            Ok(Ok(r)) => {
                let content_type = r
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(Upstream {
                    status: r.status().as_u16(),
                    content_type,
                    body: Chunks(r.into_body()),
                })
            }
            Ok(Err(e)) => Err(HttpError::Transport(describe(&e))),
            Err(_) => Err(HttpError::Timeout(timeout)),
        }
    }

    /// POSTs `body` (JSON) with `headers` and answers the status once the response
    /// headers arrive within `timeout`. The answer's body is read (at most 64 KiB, for
    /// at most a second more) only so the connection can be reused, and dropped: a
    /// receiver cannot make spotd hold more than that of what it sends. For webhooks.
    pub(crate) async fn post_for_status(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u16, HttpError> {
        let req = build_request(Method::POST, url, None, headers, Some(body))?;
        let resp = match tokio::time::timeout(timeout, self.inner.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(HttpError::Transport(describe(&e))),
            Err(_) => return Err(HttpError::Timeout(timeout)),
        };
        let status = resp.status().as_u16();
        let drain = Limited::new(resp.into_body(), 64 * 1024).collect();
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        Ok(status)
    }

    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<HttpResponse, HttpError> {
        self.send(Method::GET, url, bearer, &[], None).await
    }

    pub async fn post_json<T: serde::Serialize>(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &T,
    ) -> Result<HttpResponse, HttpError> {
        let bytes = serde_json::to_vec(body).map_err(|e| HttpError::Request(e.to_string()))?;
        self.send(Method::POST, url, bearer, &[], Some(bytes)).await
    }

    pub async fn delete(&self, url: &str, bearer: Option<&str>) -> Result<HttpResponse, HttpError> {
        self.send(Method::DELETE, url, bearer, &[], None).await
    }
}

/// An answer being received: its status and content type, and its body as a stream of
/// chunks (see [`Chunks`]).
pub(crate) struct Upstream {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Chunks,
}

impl Upstream {
    /// True for server-sent events.
    pub(crate) fn is_event_stream(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    /// The whole body, refused past `max` bytes.
    pub(crate) async fn bytes(self, max: usize) -> Result<Bytes, String> {
        Limited::new(self.body.0, max)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string())
    }
}

/// A response body as a stream of data chunks (trailers and other frames are skipped).
pub(crate) struct Chunks(hyper::body::Incoming);

impl futures_util::Stream for Chunks {
    type Item = Result<Bytes, String>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use hyper::body::Body;
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            match std::pin::Pin::new(&mut this.0).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.to_string()))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
            }
        }
    }
}

fn build_request(
    method: Method,
    url: &str,
    bearer: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(t) = bearer {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| HttpError::Request("the token is not a valid header value".into()))?;
        b = b.header(AUTHORIZATION, v);
    }
    for (k, v) in extra_headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| HttpError::Request(e.to_string()))?;
        let val = HeaderValue::from_str(v).map_err(|e| HttpError::Request(e.to_string()))?;
        b = b.header(name, val);
    }
    if body.is_some() {
        b = b.header(CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| HttpError::Request(e.to_string()))
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
