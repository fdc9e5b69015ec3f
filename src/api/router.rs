//! Routing, authentication, rate limits, body limits and idempotency: everything a
//! request goes through before and after its handler.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::Value;

use tracing::Instrument;

use super::routes::{self, Access, Lookup, Params};
use super::{error, App, Body};
use crate::accounts::Principal;
use crate::error::{Error, Result};
use crate::ids;
use crate::model::IdempotencyRecord;

/// Idempotency records answer for this long.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// The status of a record written before its operation runs: "in progress", with the
/// operation's nonce as its response.
const IN_PROGRESS: u16 = 0;

/// A record still inside its 24 h window.
fn live(r: &IdempotencyRecord, now: i64) -> bool {
    now - r.created_at < IDEMPOTENCY_TTL_MS
}

/// A request as a handler sees it: the path split and decoded once, the route's
/// parameters, the caller the route's access asked for, and the body (read and
/// size-checked when the route reads one, else empty).
pub struct Ctx {
    pub method: Method,
    pub segs: Vec<String>,
    pub params: Params,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub caller: Caller,
}

impl Ctx {
    /// The body as a JSON object, or 400 with serde's message. Only an object: serde
    /// would also fill a struct from an array of its fields in order (`[1]` as
    /// `{"first_field": 1}`), which no client means.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let first = self.body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(Error::invalid("the request body must be a JSON object"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
    }

    /// The path parameter `name` of the route's template.
    pub fn param(&self, name: &str) -> Result<&str> {
        self.params
            .get(name)
            .ok_or_else(|| Error::Bug(format!("the route has no parameter '{name}'")))
    }

    /// The account calling a [`Access::User`] route.
    pub fn account(&self) -> Result<&Principal> {
        match &self.caller {
            Caller::User(p) => Ok(p),
            _ => Err(Error::Bug("the route is not a user route".into())),
        }
    }
}

/// Who is calling.
pub enum Caller {
    Anonymous,
    User(Principal),
    Admin,
}

pub type Reply = (StatusCode, Value);

/// What a handler may answer: a status with a JSON body, or a whole response
/// (streams, text, 202 with Retry-After).
pub trait IntoResponse {
    fn into_response(self) -> Response<Body>;
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response<Body> {
        json_response(self.0, &self.1)
    }
}

impl IntoResponse for Response<Body> {
    fn into_response(self) -> Response<Body> {
        self
    }
}

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    // The one split of the path; logs and metrics name the route template, never the
    // raw path (ids, typos).
    let segs = split_path(req.uri().path());
    let lookup = match &segs {
        Ok(segs) => routes::find(method.as_str(), segs),
        Err(_) => Lookup::NoRoute,
    };
    let route = lookup.label();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", method = %method, route);
    let resp = async {
        let answer = match segs {
            Ok(segs) => dispatch(&app, req, segs, lookup).await,
            Err(e) => Err(e),
        };
        answer.unwrap_or_else(|e| error_response(&e))
    }
    .instrument(span.clone())
    .await;
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    crate::metrics::observe_http(method.as_str(), route, status, elapsed);
    let _in = span.enter();
    if routes::is_health(route) {
        tracing::debug!(status, "request");
    } else {
        tracing::info!(status, ms = elapsed.as_millis() as u64, "request");
    }
    resp
}

/// Authenticates as the route's access asks, reads the body if the route reads one,
/// and runs the route's handler. A known path with another method is a 405 with an
/// `Allow` header, once the caller has proved who its route wants (at once for a
/// public path); any other path is a 404, authenticated as its area is
/// ([`routes::area`]): a public one hears it at once, the others once the caller has
/// proved who they are and the body has passed its size check (so paths cannot be
/// probed without credentials).
async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    segs: Vec<String>,
    lookup: Lookup,
) -> Result<Response<Body>> {
    let (route, params, access) = match lookup {
        Lookup::Found(r, params) => (Some(r), params, r.access),
        Lookup::OtherMethod(r) => {
            if r.access != Access::Public {
                authenticate(app, req.headers(), r.access == Access::Admin).await?;
            }
            return Err(Error::MethodNotAllowed {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                allow: routes::allowed(&segs),
            });
        }
        Lookup::NoRoute => (None, Params::default(), routes::area(&segs)),
    };
    let caller = match access {
        Access::Public if route.is_none() => {
            return Err(Error::NotFound(format!(
                "no route for {} {}",
                req.method(),
                req.uri().path()
            )))
        }
        Access::Public => Caller::Anonymous,
        Access::User => authenticate(app, req.headers(), false).await?,
        Access::Admin => authenticate(app, req.headers(), true).await?,
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let (parts, body) = if route.is_none_or(|r| r.body) {
        read_body(app, req).await?
    } else {
        (req.into_parts().0, Bytes::new())
    };
    let ctx = Ctx {
        method: parts.method,
        segs,
        params,
        query,
        headers: parts.headers,
        body,
        caller,
    };
    match route {
        Some(r) => (r.handler)(app, &ctx).await,
        None => Err(Error::NotFound(format!(
            "no route for {} /{}",
            ctx.method,
            ctx.segs.join("/")
        ))),
    }
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_bytes(
        status,
        serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// A JSON body already encoded.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn error_response(e: &Error) -> Response<Body> {
    let p = error::to_parts(e);
    let mut r = json_response(p.status, &p.body);
    if let Some(s) = p.retry_after {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
    }
    if let Some(allow) = p.allow {
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
    }
    r
}

pub fn full(b: Vec<u8>) -> Body {
    Full::new(Bytes::from(b))
        .map_err(|never| match never {})
        .boxed()
}

fn split_path(path: &str) -> Result<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s)
                .ok_or_else(|| Error::invalid("the path is not valid percent-encoded UTF-8"))
        })
        .collect()
}

/// Decodes `%XX` escapes (not `+`: this is a path).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn read_body(
    app: &App,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes)> {
    let max = app.cfg.limits.max_body_bytes;
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(Error::TooLarge { limit: max });
        }
    }
    let bytes = Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Error::TooLarge { limit: max }
            } else {
                Error::invalid(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    Ok((parts, bytes))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(token.trim())
    } else {
        None
    }
}

async fn authenticate(app: &App, headers: &HeaderMap, admin: bool) -> Result<Caller> {
    let token = bearer(headers).ok_or_else(|| {
        Error::Unauthenticated("missing API key: send 'Authorization: Bearer <key>'".to_string())
    })?;
    // Rate limits are per API key; the admin has one bucket.
    let (caller, key) = if admin {
        if !ids::same_hash(&ids::hash_secret(token), &app.admin_hash) {
            return Err(Error::Unauthenticated("invalid admin token".into()));
        }
        (Caller::Admin, "admin".to_string())
    } else {
        let p = app.keys.authenticate(&app.store, token).await?;
        let key = p.key_id.clone();
        (Caller::User(p), key)
    };
    if let Err(not_until) = app.limiter.check_key(&key) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(Error::RateLimited {
            retry_after_secs: secs.max(1),
        });
    }
    Ok(caller)
}

/// Runs `f` at most once per `Idempotency-Key` (SPEC section 3): the same key and body
/// within 24 h answers the stored response; the same key with another body is 422.
/// Without the header, `f` just runs.
///
/// `f` gets a stable id for this use of the key (or `None` without a key): operations
/// derive the id of the object they create from it, so a retry after a crash between
/// the operation's commit and the stored response finds that object instead of making
/// a second one. It is a random nonce written (as an in-progress record) before `f`
/// runs, so the same key used again after its 24 h is a new operation with new ids.
pub async fn idempotent<F, Fut>(app: &App, scope: &str, ctx: &Ctx, f: F) -> Result<Reply>
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Reply>>,
{
    let Some(key) = ctx.headers.get("idempotency-key") else {
        return f(None).await;
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| Error::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters"))?
        .to_string();
    let mut h = Vec::with_capacity(ctx.body.len() + 64);
    h.extend_from_slice(ctx.method.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(ctx.segs.join("/").as_bytes());
    h.push(b'\n');
    h.extend_from_slice(&ctx.body);
    let body_hash = ids::hash_bytes(&h);
    let now = app.clock.now();
    let (sc, k) = (scope.to_string(), key.clone());
    let existing = app.store.read(move |rx| rx.idempotency(&sc, &k)).await?;
    if let Some(rec) = existing.filter(|r| live(r, now) && r.status != IN_PROGRESS) {
        return replay(rec, &body_hash);
    }
    let lock = format!("{scope}\u{0}{key}");
    {
        let mut held = app.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !held.insert(lock.clone()) {
            return Err(Error::conflict(
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed",
            ));
        }
    }
    // Released however this ends, including a client that hangs up (hyper then drops
    // this future halfway).
    let _release = InFlight { app, lock };
    // Another request with this key may have finished between the read and the lock.
    let (sc, k) = (scope.to_string(), key.clone());
    let again: Result<Option<IdempotencyRecord>> =
        app.store.read(move |rx| Ok(rx.idempotency(&sc, &k)?)).await;
    let result = match again {
        Ok(Some(rec)) if live(&rec, now) && rec.status != IN_PROGRESS => replay(rec, &body_hash),
        Ok(prev) => {
            // An attempt with this key that never finished (the daemon died in it) left
            // its nonce: the retry reuses it, and so finds what that attempt made.
            let (nonce, started) = match prev.filter(|r| live(r, now)) {
                Some(r) if r.body_hash != body_hash => {
                    return Err(Error::IdempotencyMismatch(
                        "this Idempotency-Key was already used with a different request body"
                            .into(),
                    ))
                }
                Some(r) => (r.response, r.created_at),
                None => {
                    let nonce = ids::random_token(16);
                    let marker = IdempotencyRecord {
                        body_hash: body_hash.clone(),
                        status: IN_PROGRESS,
                        response: nonce.clone(),
                        created_at: now,
                    };
                    let (sc, k) = (scope.to_string(), key.clone());
                    app.store
                        .write(move |tx| tx.put_idempotency(&sc, &k, &marker))
                        .await?;
                    (nonce, now)
                }
            };
            let r = f(Some(nonce)).await;
            let stored = match &r {
                Ok((status, v)) => Some((status.as_u16(), v.clone())),
                Err(e) => {
                    let p = error::to_parts(e);
                    // Rate limits and server errors are not answers worth replaying.
                    (p.status.is_client_error() && p.status != StatusCode::TOO_MANY_REQUESTS)
                        .then(|| (p.status.as_u16(), p.body))
                }
            };
            if let Some((status, v)) = stored {
                let mut v = v;
                redact_secrets(&mut v);
                let rec = IdempotencyRecord {
                    body_hash: body_hash.clone(),
                    status,
                    response: v.to_string(),
                    // The window is 24 h from the first attempt.
                    created_at: started,
                };
                let (sc, k) = (scope.to_string(), key.clone());
                if let Err(e) = app
                    .store
                    .write(move |tx| tx.put_idempotency(&sc, &k, &rec))
                    .await
                {
                    tracing::warn!(error = %e, "could not store an idempotency record");
                }
            }
            r
        }
        Err(e) => Err(e),
    };
    result
}

/// API key secrets are shown once and stored only as hashes, so the stored answer of
/// a request that created a key keeps the key's id and prefix but not its secret: a
/// replay shows `"key": null`.
fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("object").and_then(Value::as_str) == Some("api_key") {
                if let Some(k) = o.get_mut("key") {
                    *k = Value::Null;
                }
            }
            o.values_mut().for_each(redact_secrets);
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// Holds an Idempotency-Key as "in progress" until dropped.
struct InFlight<'a> {
    app: &'a App,
    lock: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.app
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.lock);
    }
}

fn replay(rec: IdempotencyRecord, body_hash: &str) -> Result<Reply> {
    if rec.body_hash != body_hash {
        return Err(Error::IdempotencyMismatch(
            "this Idempotency-Key was already used with a different request body".into(),
        ));
    }
    let v: Value = serde_json::from_str(&rec.response)
        .map_err(|e| Error::Bug(format!("stored idempotent response unreadable: {e}")))?;
    let status = StatusCode::from_u16(rec.status)
        .map_err(|e| Error::Bug(format!("stored idempotent status: {e}")))?;
    Ok((status, v))
}
