//! HTTP routing of the sandbox clouds: each cloud's provider protocol, its test control
//! endpoints, the model endpoints of its instances, and the hosted upstream.
//!
//! Every handler turns bad input into a JSON error (`{"error": "..."}` on the provider
//! protocol, the OpenAI error shape on model endpoints) and never panics. Changes to an
//! instance are written to the sandbox's redb file before they are acknowledged.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::money::Usd;
use crate::providers::protocol::{
    CreateInstance, ErrorBody, InstanceState, InstancesResponse, OffersResponse, ProviderOffer,
};

use super::llm::{self, Kind};
use super::sim::{mix, preemption_time, InstanceRecord};
use super::{catalog::str_key, CloudState, State, HOSTED_MODELS};

/// Request bodies past this are refused (413).
const MAX_BODY: usize = 1024 * 1024;

/// A finished answer; turned into a hyper response in one place.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Reply {
        match serde_json::to_vec(v) {
            Ok(b) => Reply {
                status,
                content_type: "application/json",
                body: Bytes::from(b),
            },
            Err(_) => Reply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: "application/json",
                body: Bytes::from_static(b"{\"error\":\"internal\"}"),
            },
        }
    }

    pub fn sse(text: String) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            body: Bytes::from(text),
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

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.body));
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

/// The hyper service function.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    Ok(route(&state, &parts.method, &segs, &body)
        .await
        .into_response())
}

async fn route(st: &Arc<State>, m: &Method, segs: &[&str], body: &[u8]) -> Reply {
    let now_secs = st.clock.now() / 1000;
    match segs {
        [] if m == Method::GET => Reply::json(
            StatusCode::OK,
            &json!({
                "clouds": st.clouds.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                "hosted": {"base_url": st.hosted_base_url(), "models": HOSTED_MODELS},
            }),
        ),
        ["hosted", "v1", rest @ ..] => {
            let serves = |model: &str| HOSTED_MODELS.contains(&model);
            let hosted: Vec<String> = HOSTED_MODELS.iter().map(|s| s.to_string()).collect();
            model_route(m, rest, body, &hosted, &serves, now_secs)
        }
        [cloud, rest @ ..] => match st.cloud(cloud) {
            Some(c) => cloud_route(st, c, m, rest, body).await,
            None => Reply::err(StatusCode::NOT_FOUND, "not_found"),
        },
        _ => Reply::err(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// `/models`, `/chat/completions`, `/completions` of a model server.
fn model_route(
    m: &Method,
    rest: &[&str],
    body: &[u8],
    models: &[String],
    serves: &dyn Fn(&str) -> bool,
    now_secs: i64,
) -> Reply {
    match (m, rest) {
        (&Method::GET, ["models"]) => llm::models(models, now_secs),
        (&Method::POST, ["chat", "completions"]) => {
            llm::complete(Kind::Chat, body, serves, now_secs)
        }
        (&Method::POST, ["completions"]) => llm::complete(Kind::Completion, body, serves, now_secs),
        _ => llm::error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "no such route on this model server",
        ),
    }
}

async fn cloud_route(
    st: &Arc<State>,
    c: &CloudState,
    m: &Method,
    rest: &[&str],
    body: &[u8],
) -> Reply {
    match (m, rest) {
        (&Method::GET, ["offers"]) => offers(st, c).await,
        (&Method::GET, ["instances"]) => {
            let now = st.clock.now();
            let inst = st.instances.lock().await;
            let list = inst
                .cloud(&c.name)
                .map(|ci| {
                    let mut v: Vec<&InstanceRecord> = ci.by_id.values().collect();
                    v.sort_by_key(|r| r.seq);
                    v.into_iter()
                        .map(|r| r.to_instance(now, &st.cloud_base(&c.name)))
                        .collect()
                })
                .unwrap_or_default();
            Reply::json(StatusCode::OK, &InstancesResponse { instances: list })
        }
        (&Method::POST, ["instances"]) => create(st, c, body).await,
        (&Method::GET, ["instances", id]) => {
            let now = st.clock.now();
            let inst = st.instances.lock().await;
            match inst.get(&c.name, id) {
                Some(r) => {
                    Reply::json(StatusCode::OK, &r.to_instance(now, &st.cloud_base(&c.name)))
                }
                None => Reply::err(StatusCode::NOT_FOUND, "not_found"),
            }
        }
        (&Method::DELETE, ["instances", id]) => {
            change(st, c, id, |r, now| match r.state_at(now).0 {
                InstanceState::Provisioning | InstanceState::Running => {
                    r.deleted_at = Some(now);
                    Ok(true)
                }
                // Already going or gone: answer it as it is (idempotent).
                _ => Ok(false),
            })
            .await
        }
        (_, ["instances", id, "v1", tail @ ..]) => instance_model(st, c, id, m, tail, body).await,
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
        (&Method::POST, ["_control", "fail"]) => {
            #[derive(serde::Deserialize)]
            struct Fail {
                offers: bool,
            }
            match serde_json::from_slice::<Fail>(body) {
                Ok(f) => {
                    c.fail_offers.store(f.offers, Ordering::SeqCst);
                    Reply::json(StatusCode::OK, &json!({"offers": f.offers}))
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
        o.price_per_hour = Usd((p.micros() + 50) / 100 * 100);
        o.available = o
            .available
            .saturating_sub(active.get(&o.id).copied().unwrap_or(0));
    }
    Reply::json(StatusCode::OK, &OffersResponse { offers })
}

async fn create(st: &Arc<State>, c: &CloudState, body: &[u8]) -> Reply {
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
    };
    if let Err(e) = st.persist(rec.clone(), Some(seq)).await {
        tracing::warn!("sandbox: {e}");
        return Reply::err(StatusCode::INTERNAL_SERVER_ERROR, "storage_error");
    }
    let view = rec.to_instance(now, &st.cloud_base(&c.name));
    inst.insert(rec);
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
    let view = rec.to_instance(now, &st.cloud_base(&c.name));
    inst.insert(rec);
    Reply::json(StatusCode::OK, &view)
}

/// The OpenAI-compatible server of a running model instance.
async fn instance_model(
    st: &Arc<State>,
    c: &CloudState,
    id: &str,
    m: &Method,
    tail: &[&str],
    body: &[u8],
) -> Reply {
    let now = st.clock.now();
    let model = {
        let inst = st.instances.lock().await;
        match inst.get(&c.name, id) {
            Some(r) if r.model.is_some() => {
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
    let serves = |req_model: &str| req_model == model;
    model_route(
        m,
        tail,
        body,
        std::slice::from_ref(&model),
        &serves,
        now / 1000,
    )
}

fn secs_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}
