//! HTTP routing of the sandbox clouds: each cloud's provider protocol, its test control
//! endpoints, the model endpoints of its instances, and the hosted upstream.
//!
//! Every handler turns bad input into a JSON error (`{"error": "..."}` on the provider
//! protocol, the OpenAI error shape on model endpoints) and never panics. Changes to an
//! instance are written to the sandbox's redb file before they are acknowledged.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::ids;
use crate::providers::protocol::{
    CreateInstance, ErrorBody, InstanceState, InstancesResponse, OffersResponse, ProviderOffer,
};

use super::catalog::{quoted, str_key};
use super::llm::{self, Kind};
use super::sim::{mix, preemption_time, InstanceRecord};
use super::stream::{self, ReplyBody};
use super::{CloudState, State, HOSTED_EMBEDDING_MODELS, HOSTED_MODELS};

/// Request bodies past this are refused (413).
const MAX_BODY: usize = 1024 * 1024;

/// Longest wait `x-sandbox-delay-ms` and `x-sandbox-chunk-delay-ms` accept.
const MAX_INJECTED_DELAY_MS: u64 = 30_000;

/// A finished answer; turned into a hyper response in one place.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: ReplyBody,
}

impl Reply {
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Reply {
        match serde_json::to_vec(v) {
            Ok(b) => Reply {
                status,
                content_type: "application/json",
                body: ReplyBody::Full(Some(Bytes::from(b))),
            },
            Err(_) => Reply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: "application/json",
                body: ReplyBody::Full(Some(Bytes::from_static(b"{\"error\":\"internal\"}"))),
            },
        }
    }

    fn sse(body: ReplyBody) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            body,
        }
    }

    /// A provider-protocol error: `{"error": code}`.
    fn err(status: StatusCode, code: &str) -> Reply {
        Reply::json(
            status,
            &ErrorBody {
                error: code.to_string(),
            },
        )
    }

    fn into_response(self) -> Response<ReplyBody> {
        let mut r = Response::new(self.body);
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if self.content_type == "text/event-stream" {
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        r
    }
}

/// The test fault-injection headers of a model-server request (see the module doc of
/// `sandbox`).
#[derive(Default)]
pub struct Faults {
    /// `x-sandbox-delay-ms`: wait this long before answering.
    delay: Option<Duration>,
    /// `x-sandbox-chunk-delay-ms`: pacing between streamed events instead of the default.
    pacing: Option<Duration>,
    /// `x-sandbox-cut-after`: break a stream after this many content events.
    cut_after: Option<usize>,
}

impl Faults {
    /// Reads the headers; a malformed or too large value is a message for a 400.
    fn parse(h: &HeaderMap) -> Result<Faults, String> {
        fn num(h: &HeaderMap, name: &str, max: u64) -> Result<Option<u64>, String> {
            let Some(v) = h.get(name) else {
                return Ok(None);
            };
            match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(format!("'{name}' must be an integer from 0 to {max}")),
            }
        }
        let ms = |n: Option<u64>| n.map(Duration::from_millis);
        Ok(Faults {
            delay: ms(num(h, "x-sandbox-delay-ms", MAX_INJECTED_DELAY_MS)?),
            pacing: ms(num(h, "x-sandbox-chunk-delay-ms", MAX_INJECTED_DELAY_MS)?),
            cut_after: num(h, "x-sandbox-cut-after", u64::from(u32::MAX))?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        })
    }
}

/// The hyper service function.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(Reply::err(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").into_response())
        }
    };
    let path = parts.uri.path().to_string();
    // Empty segments are ignored, so `base/` + `/offers` works as well as `base/offers`.
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let call = Call {
        method: &parts.method,
        body: &body,
        faults: Faults::parse(&parts.headers),
        bearer: parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
    };
    Ok(route(&state, &segs, &call).await.into_response())
}

/// What a handler needs of the request besides its path.
struct Call<'a> {
    method: &'a Method,
    body: &'a [u8],
    /// Only model servers honour these, so a bad header only fails a model request.
    faults: Result<Faults, String>,
    /// The `Authorization: Bearer` token, if any.
    bearer: Option<&'a str>,
}

async fn route(st: &Arc<State>, segs: &[&str], call: &Call<'_>) -> Reply {
    let now_secs = st.clock.now() / 1000;
    let (m, body) = (call.method, call.body);
    match segs {
        [] if m == Method::GET => Reply::json(
            StatusCode::OK,
            &json!({
                "clouds": st.clouds.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                "hosted": {"base_url": st.hosted_base_url(), "models": hosted_models()},
            }),
        ),
        ["hosted", "v1", rest @ ..] => {
            let server = ModelServer {
                models: hosted_models(),
                chat: &|model| HOSTED_MODELS.contains(&model),
                embed: &|model| HOSTED_EMBEDDING_MODELS.contains(&model),
            };
            model_route(st, &server, rest, call, now_secs).await
        }
        [cloud, rest @ ..] => match st.cloud(cloud) {
            Some(c) => cloud_route(st, c, m, rest, body, call).await,
            None => Reply::err(StatusCode::NOT_FOUND, "not_found"),
        },
        _ => Reply::err(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// Every model the hosted upstream lists: chat models, then embedding models.
fn hosted_models() -> Vec<String> {
    HOSTED_MODELS
        .iter()
        .chain(HOSTED_EMBEDDING_MODELS)
        .map(|s| s.to_string())
        .collect()
}

/// What one model server serves.
struct ModelServer<'a> {
    /// Listed by `GET /models`.
    models: Vec<String>,
    /// Answers `/chat/completions` and `/completions` for this model.
    chat: &'a (dyn Fn(&str) -> bool + Sync),
    /// Answers `/embeddings` for this model.
    embed: &'a (dyn Fn(&str) -> bool + Sync),
}

/// `/models`, `/chat/completions`, `/completions`, `/embeddings` of a model server,
/// after the injected delay.
async fn model_route(
    st: &State,
    server: &ModelServer<'_>,
    rest: &[&str],
    call: &Call<'_>,
    now_secs: i64,
) -> Reply {
    let faults = match &call.faults {
        Ok(f) => f,
        Err(msg) => return llm::error(StatusCode::BAD_REQUEST, "invalid_request_error", msg),
    };
    if let Some(d) = faults.delay {
        tokio::time::sleep(d).await;
    }
    let body = call.body;
    let kind = match (call.method, rest) {
        (&Method::GET, ["models"]) => return llm::models(&server.models, now_secs),
        (&Method::POST, ["embeddings"]) => return llm::embeddings(body, server.embed),
        (&Method::POST, ["chat", "completions"]) => Kind::Chat,
        (&Method::POST, ["completions"]) => Kind::Completion,
        _ => {
            return llm::error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such route on this model server",
            )
        }
    };
    let answer = match llm::complete(kind, body, server.chat, now_secs) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    if !answer.stream {
        return Reply::json(StatusCode::OK, &answer.body());
    }
    let pacing = faults.pacing.unwrap_or(st.stream_delay);
    Reply::sse(stream::spawn(
        answer.events(),
        pacing,
        faults.cut_after,
        &st.live_streams,
    ))
}

async fn cloud_route(
    st: &Arc<State>,
    c: &CloudState,
    m: &Method,
    rest: &[&str],
    body: &[u8],
    call: &Call<'_>,
) -> Reply {
    if c.down.load(Ordering::SeqCst) && rest.first() != Some(&"_control") {
        return Reply::err(StatusCode::SERVICE_UNAVAILABLE, "simulated_outage");
    }
    match (m, rest) {
        (&Method::GET, ["offers"]) => offers(st, c).await,
        (&Method::GET, ["instances"]) => {
            let now = st.clock.now();
            let inst = st.instances.lock().await;
            let list: Vec<_> = inst
                .cloud(&c.name)
                .map(|ci| {
                    let mut v: Vec<&InstanceRecord> = ci.by_id.values().collect();
                    v.sort_by_key(|r| r.seq);
                    v.into_iter().map(|r| st.view(r, now)).collect()
                })
                .unwrap_or_default();
            drop(inst);
            for i in list.iter().filter(|i| i.state.is_gone()) {
                st.ssh.close(&c.name, &i.id).await;
            }
            Reply::json(StatusCode::OK, &InstancesResponse { instances: list })
        }
        (&Method::POST, ["instances"]) => create(st, c, body).await,
        (&Method::GET, ["instances", id]) => {
            let now = st.clock.now();
            let view = st
                .instances
                .lock()
                .await
                .get(&c.name, id)
                .map(|r| st.view(r, now));
            match view {
                Some(v) => {
                    if v.state.is_gone() {
                        st.ssh.close(&c.name, id).await;
                    }
                    Reply::json(StatusCode::OK, &v)
                }
                None => Reply::err(StatusCode::NOT_FOUND, "not_found"),
            }
        }
        (&Method::DELETE, ["instances", id]) => {
            change(st, c, id, |r, now| match r.state_at(now).0 {
                // An interrupted instance is deleted too (like a stopped spot machine
                // that still exists until its owner destroys it).
                InstanceState::Provisioning
                | InstanceState::Running
                | InstanceState::Interrupted => {
                    r.deleted_at = Some(now);
                    Ok(true)
                }
                // Already going or gone: answer it as it is (idempotent).
                _ => Ok(false),
            })
            .await
        }
        (_, ["instances", id, "v1", tail @ ..]) => instance_model(st, c, id, tail, call).await,
        (&Method::POST, ["_control", "preempt", id]) => {
            change(st, c, id, |r, now| match r.state_at(now).0 {
                InstanceState::Provisioning | InstanceState::Running => {
                    r.preempt_at = Some(now);
                    Ok(true)
                }
                _ => Err(Reply::err(StatusCode::CONFLICT, "not_running")),
            })
            .await
        }
        (&Method::GET, ["_control", "parked"]) => Reply::json(
            StatusCode::OK,
            &json!({"parked": c.parked_creates.load(Ordering::SeqCst)}),
        ),
        (&Method::POST, ["_control", "fail"]) => {
            #[derive(serde::Deserialize)]
            struct Fail {
                offers: bool,
                #[serde(default)]
                down: bool,
                #[serde(default)]
                create_lies: usize,
                #[serde(default)]
                create_delay_seconds: usize,
            }
            match serde_json::from_slice::<Fail>(body) {
                Ok(f) => {
                    c.fail_offers.store(f.offers, Ordering::SeqCst);
                    c.down.store(f.down, Ordering::SeqCst);
                    c.create_lies.store(f.create_lies, Ordering::SeqCst);
                    c.create_delay_seconds
                        .store(f.create_delay_seconds, Ordering::SeqCst);
                    Reply::json(
                        StatusCode::OK,
                        &json!({"offers": f.offers, "down": f.down, "create_lies": f.create_lies}),
                    )
                }
                Err(e) => Reply::err(StatusCode::BAD_REQUEST, &format!("bad_request: {e}")),
            }
        }
        (_, ["offers"] | ["instances"] | ["instances", _]) => {
            Reply::err(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        _ => Reply::err(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// `GET offers`: one refresh (drift step) and the capacity left per offer.
async fn offers(st: &Arc<State>, c: &CloudState) -> Reply {
    if c.fail_offers.load(Ordering::SeqCst) {
        return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "simulated_failure");
    }
    let (mut offers, prices) = match c.catalogue.lock() {
        Ok(mut cat) => {
            let prices = cat.refresh(st.cfg.seed, st.drift_ppm);
            (cat.offers.clone(), prices)
        }
        Err(_) => return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let now = st.clock.now();
    let active = st.instances.lock().await.active_counts(&c.name, now);
    for (o, p) in offers.iter_mut().zip(prices) {
        // Marketplaces quote to the hundredth of a cent.
        o.price_per_hour = quoted(p);
        o.available = o
            .available
            .saturating_sub(active.get(&o.id).copied().unwrap_or(0));
    }
    Reply::json(StatusCode::OK, &OffersResponse { offers })
}

async fn create(st: &Arc<State>, c: &CloudState, body: &[u8]) -> Reply {
    let delay = c.create_delay_seconds.load(Ordering::SeqCst);
    if delay > 0 {
        c.parked_creates.fetch_add(1, Ordering::SeqCst);
        st.clock.sleep(delay as i64 * 1000).await;
        c.parked_creates.fetch_sub(1, Ordering::SeqCst);
    }
    let req: CreateInstance = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Reply::err(StatusCode::BAD_REQUEST, &format!("bad_request: {e}")),
    };
    let offer: ProviderOffer = match c.catalogue.lock() {
        Ok(cat) => match cat.offer(&req.offer_id) {
            Some(o) => o.clone(),
            None => return Reply::err(StatusCode::NOT_FOUND, "unknown_offer"),
        },
        Err(_) => return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let now = st.clock.now();
    let mut inst = st.instances.lock().await;
    if inst.active_on(&c.name, &offer.id, now) >= offer.available {
        return Reply::err(StatusCode::CONFLICT, "no_capacity");
    }
    let seq = inst.counter(&c.name) + 1;
    let id = format!("{}-{seq:06}", c.name);
    let mut ready = now.saturating_add(secs_ms(st.cfg.provision_seconds));
    if req.model.is_some() {
        ready = ready.saturating_add(secs_ms(st.cfg.model_load_seconds));
    }
    let preempt_at = if offer.interruptible {
        let key = mix(&[st.cfg.seed, str_key(&c.name), str_key(&id)]);
        preemption_time(ready, st.cfg.preemptions_per_hour, key)
    } else {
        None
    };
    // A model server answers only the key it was started with (vLLM's VLLM_API_KEY).
    let api_key = match req.model {
        Some(_) => req.env.get(crate::inference::DEPLOYMENT_KEY_ENV).cloned(),
        None => None,
    };
    let rec = InstanceRecord {
        cloud: c.name.clone(),
        id,
        seq,
        offer_id: offer.id,
        label: req.label,
        image: req.image,
        model: req.model,
        created_at: now,
        ready_at: ready,
        preempt_at,
        deleted_at: None,
        api_key,
    };
    if let Err(e) = st.persist(rec.clone(), Some(seq)).await {
        tracing::warn!("sandbox: {e}");
        return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "storage_error");
    }
    if rec.model.is_none() {
        // A plain machine is reached over SSH: its port listens from now on.
        if let Err(e) = st.ssh.open(Arc::downgrade(st), &c.name, &rec.id).await {
            tracing::warn!("sandbox: {e}");
        }
    }
    let view = st.view(&rec, now);
    inst.insert(rec);
    let lie = c
        .create_lies
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if lie {
        return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "simulated_failure");
    }
    Reply::json(StatusCode::CREATED, &view)
}

/// Applies `f` to instance `id` and, when it says it changed something, stores the
/// record before answering with the instance. `f` may refuse with a reply.
async fn change(
    st: &Arc<State>,
    c: &CloudState,
    id: &str,
    f: impl FnOnce(&mut InstanceRecord, i64) -> Result<bool, Reply>,
) -> Reply {
    let now = st.clock.now();
    let mut inst = st.instances.lock().await;
    let Some(mut rec) = inst.get(&c.name, id).cloned() else {
        return Reply::err(StatusCode::NOT_FOUND, "not_found");
    };
    match f(&mut rec, now) {
        Err(reply) => return reply,
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = st.persist(rec.clone(), None).await {
                tracing::warn!("sandbox: {e}");
                return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "storage_error");
            }
        }
    }
    let view = st.view(&rec, now);
    inst.insert(rec);
    drop(inst);
    // Deleted or preempted: the port is closed before the cloud answers.
    if view.state != InstanceState::Running && view.state != InstanceState::Provisioning {
        st.ssh.close(&c.name, id).await;
    }
    Reply::json(StatusCode::OK, &view)
}

/// The OpenAI-compatible server of a running model instance.
async fn instance_model(
    st: &Arc<State>,
    c: &CloudState,
    id: &str,
    tail: &[&str],
    call: &Call<'_>,
) -> Reply {
    let now = st.clock.now();
    let model = {
        let inst = st.instances.lock().await;
        match inst.get(&c.name, id) {
            Some(r) if r.model.is_some() => {
                let key_ok = match &r.api_key {
                    Some(k) => call.bearer.is_some_and(|b| {
                        ids::same_hash(&ids::hash_secret(b), &ids::hash_secret(k))
                    }),
                    None => true,
                };
                if !key_ok {
                    return llm::error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request_error",
                        "this model server answers only its deployment key",
                    );
                }
                if r.state_at(now).0 != InstanceState::Running {
                    return llm::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "the model server is not running",
                    );
                }
                r.model.clone().unwrap_or_default()
            }
            _ => {
                return llm::error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "no model server here",
                )
            }
        }
    };
    // The instance's one model does chat, completions and embeddings alike.
    let serves = |req_model: &str| req_model == model;
    let server = ModelServer {
        models: vec![model.clone()],
        chat: &serves,
        embed: &serves,
    };
    model_route(st, &server, tail, call, now / 1000).await
}

fn secs_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}
