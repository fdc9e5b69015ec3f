//! OpenAI-compatible inference: the model list with availability tiers, proxying to
//! hosted upstreams (billed per token) or to the caller's own deployment (billed by GPU
//! time), cold starts on the cheapest fitting spot GPU, `Prefer: wait`, and the idle
//! reaper.
//!
//! A deployment is an ordinary rental with `model` set, so its money, state machine,
//! reconciliation and preemption handling are the rentals'. This module adds: one
//! deployment per (account, model) however many requests arrive at once, readiness
//! (traffic only once the instance runs *and* its model server answers), activity, and
//! redeploying after a preemption.
//!
//! Here: the model list, the dispatch of a request by model (`handle`, with
//! `Prefer: wait`), and the upstream call both proxies share. `hosted` proxies and
//! bills hosted models; `deployments` starts, tracks and proxies to deployments;
//! `reaper` ends idle ones; `stream` meters server-sent events.

mod admission;
pub mod catalog;
mod deployments;
mod hosted;
pub mod reaper;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::http_client::{HttpClient, HttpError, Upstream};
use crate::market::{Market, OfferFilter};
use crate::model::Rental;
use crate::rentals::Rentals;
use crate::store::Store;
use crate::tasks::Tasks;
use catalog::{Catalog, Model};
use deployments::{DeployLock, Status};
use reaper::Activity;
use stream::SseMeter;

pub use deployments::DEPLOYMENT_KEY_ENV;

/// Largest upstream answer read whole (non-streaming).
const MAX_UPSTREAM_BODY: usize = 16 * 1024 * 1024;
/// `Prefer: wait=N` (and `deployments.default_wait_seconds`) is capped here.
pub const MAX_WAIT_SECONDS: u64 = 900;

#[derive(Clone, Debug)]
pub struct InferenceConfig {
    pub idle_timeout_seconds: u64,
    pub upstream_timeout: Duration,
    /// Expected time from cold start to ready (provisioning + model load).
    pub estimated_deploy_seconds: u64,
    /// Output tokens a hosted request without `max_tokens` reserves credit for.
    pub reserve_output_tokens: u64,
}

/// The three OpenAI endpoints spotd proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

/// What an inference request answers; `api` alone turns it into an HTTP response.
pub enum Answer {
    /// A JSON body as the upstream sent it, with its status.
    Json {
        status: u16,
        body: Bytes,
        request_id: String,
    },
    /// Server-sent events passed on chunk by chunk; the stream's end settles its bill.
    Events {
        status: u16,
        events: SseMeter,
        request_id: String,
    },
    /// The model is being deployed: ready in about `eta_seconds`. `stream` says the
    /// request asked for a stream (which a 202 JSON body would silently end).
    Deploying {
        model: String,
        eta_seconds: u64,
        stream: bool,
    },
}

pub struct Inference {
    pub catalog: Catalog,
    pub(crate) store: Store,
    market: Market,
    pub(crate) rentals: Rentals,
    pub(crate) clock: Clock,
    client: HttpClient,
    /// Short-timeout client for readiness probes (one pool, not one per probe).
    probe: HttpClient,
    pub(crate) cfg: InferenceConfig,
    locks: Mutex<HashMap<(String, String), DeployLock>>,
    /// Deployments found ready, with the endpoint they answered at (a rental whose
    /// address changed is probed again).
    ready: Mutex<HashMap<String, String>>,
    pub(crate) activity: Arc<Activity>,
    /// Charges of streams and activity writes run here, drained before the store closes.
    tasks: Tasks,
    /// Hosted requests' reservations against available credit.
    admission: Arc<admission::Admission>,
}

impl Inference {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Catalog,
        store: Store,
        market: Market,
        rentals: Rentals,
        clock: Clock,
        client: HttpClient,
        cfg: InferenceConfig,
        tasks: Tasks,
    ) -> Inference {
        Inference {
            catalog,
            store,
            market,
            rentals,
            clock,
            client,
            probe: HttpClient::new(Duration::from_secs(2)),
            cfg,
            locks: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
            activity: Arc::new(Activity::default()),
            tasks,
            admission: Arc::default(),
        }
    }

    /// `GET /v1/models`: the catalogue with availability as this caller sees it.
    pub async fn list_models(&self, account: &str) -> Result<Value> {
        let deps = self.deployments(account).await?;
        let mut data = Vec::new();
        for (id, m) in &self.catalog.models {
            data.push(self.model_view(id, m, deps.get(id).cloned()).await);
        }
        // The whole catalogue in one page: the list shape of every other list.
        Ok(json!({"object": "list", "data": data, "next_cursor": null}))
    }

    pub async fn get_model(&self, account: &str, id: &str) -> Result<Value> {
        let m = self.catalog.get(id).ok_or_else(|| model_not_found(id))?;
        let dep = self.deployments(account).await?.remove(id);
        Ok(self.model_view(id, m, dep).await)
    }

    async fn model_view(&self, id: &str, m: &Model, dep: Option<Rental>) -> Value {
        match m {
            Model::Hosted(h) => json!({
                "id": id, "object": "model", "created": 0, "owned_by": h.upstream,
                "availability": "instant", "estimated_deploy_seconds": null,
                "pricing": {"type": "per_token",
                    "input_usd_per_mtok": h.input_per_mtok.to_json(),
                    "output_usd_per_mtok": h.output_per_mtok.to_json()},
            }),
            Model::Cold(c) => {
                let (availability, eta, rented) = match self.status_of(dep).await {
                    Status::Ready(r) => ("instant", None, Some(r)),
                    Status::Deploying(r) => ("deploying", Some(self.eta(&r)), Some(r)),
                    Status::Cold => ("cold", None, None),
                };
                // The machine the caller pays for: its deployment's, at the locked price,
                // else the one a cold start would rent now.
                let machine = match rented {
                    Some(r) => Some((r.price_per_hour, r.offer.gpu_count, r.offer.gpu)),
                    None => self
                        .market
                        .cheapest(
                            &OfferFilter {
                                min_total_vram_gb: Some(c.min_vram_gb),
                                exclude_providers: self.rentals.providers_without_model_servers(),
                                ..OfferFilter::default()
                            },
                            1,
                        )
                        .into_iter()
                        .next()
                        .map(|o| (o.price_per_hour, o.gpu_count, o.gpu)),
                };
                json!({
                    "id": id, "object": "model", "created": 0, "owned_by": "spotd",
                    "availability": availability,
                    "estimated_deploy_seconds": eta.or(Some(self.cfg.estimated_deploy_seconds)).filter(|_| availability != "instant"),
                    "min_vram_gb": c.min_vram_gb,
                    "pricing": {"type": "gpu_time",
                        "usd_per_hour": machine.as_ref().map(|m| m.0.to_json()),
                        "gpu": machine.as_ref().map(|m| format!("{} x {}", m.1, m.2))},
                })
            }
        }
    }

    /// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
    pub async fn handle(
        &self,
        account: &str,
        ep: Endpoint,
        body: &[u8],
        prefer_wait: Option<u64>,
    ) -> Result<Answer> {
        let mut req: Value = serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))?;
        if !req.is_object() {
            return Err(Error::invalid("the request body must be a JSON object"));
        }
        let model = req
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::invalid_param("model", "'model' is required and must be a string")
            })?
            .to_string();
        let stream = match req.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::invalid_param("stream", "'stream' must be a boolean")),
        };
        if stream && ep == Endpoint::Embeddings {
            return Err(Error::invalid_param("stream", "embeddings do not stream"));
        }
        if ep == Endpoint::Embeddings {
            check_embeddings(&req)?;
        }
        match self.catalog.get(&model).cloned() {
            None => Err(model_not_found(&model)),
            Some(Model::Hosted(h)) => self.proxy_hosted(account, ep, &h, &mut req, stream).await,
            Some(Model::Cold(c)) => {
                let mut status = self.status(account, &c.id).await?;
                if matches!(status, Status::Cold) {
                    status = self.ensure_deployment(account, &c).await?;
                }
                if let (Status::Deploying(_), Some(wait)) = (&status, prefer_wait) {
                    let deadline = self.clock.now() + wait.min(MAX_WAIT_SECONDS) as i64 * 1000;
                    while self.clock.now() < deadline {
                        self.clock.sleep(500.min(deadline - self.clock.now())).await;
                        status = self.status(account, &c.id).await?;
                        match status {
                            Status::Deploying(_) => {}
                            Status::Ready(_) => break,
                            // Lost meanwhile (preempted, failed): start again.
                            Status::Cold => status = self.ensure_deployment(account, &c).await?,
                        }
                    }
                }
                match status {
                    Status::Ready(r) => self.proxy_deployment(ep, &r, &req, stream).await,
                    Status::Deploying(r) => Ok(Answer::Deploying {
                        model: c.id.clone(),
                        eta_seconds: self.eta(&r),
                        stream,
                    }),
                    Status::Cold => Ok(Answer::Deploying {
                        model: c.id.clone(),
                        eta_seconds: self.cfg.estimated_deploy_seconds,
                        stream,
                    }),
                }
            }
        }
    }

    /// Sends the request upstream: a timeout is `UpstreamTimedOut`, any other failure
    /// and an upstream 5xx are `UpstreamFailed`. Upstream 4xx answers pass through as
    /// they are (they are the caller's mistake).
    async fn forward(
        &self,
        url: &str,
        key: Option<&str>,
        body: Vec<u8>,
        who: &str,
    ) -> Result<Upstream> {
        let resp = self
            .client
            .post_streaming(url, key, body, self.cfg.upstream_timeout)
            .await
            .map_err(|e| match e {
                HttpError::Timeout(d) => Error::UpstreamTimedOut(format!(
                    "the upstream ({who}) did not answer within {} s",
                    d.as_secs()
                )),
                other => Error::UpstreamFailed(format!("the upstream ({who}) failed: {other}")),
            })?;
        if resp.status >= 500 {
            let status = resp.status;
            let (_, bytes) = read_all(resp).await.unwrap_or((status, Bytes::new()));
            let msg = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            return Err(Error::UpstreamFailed(format!(
                "the upstream ({who}) answered {status}{}{msg}",
                if msg.is_empty() { "" } else { ": " }
            )));
        }
        Ok(resp)
    }
}

pub fn model_not_found(id: &str) -> Error {
    Error::ModelNotFound(format!(
        "The model '{id}' does not exist or you do not have access to it."
    ))
}

async fn read_all(r: Upstream) -> Result<(u16, Bytes)> {
    let status = r.status;
    let bytes = r
        .bytes(MAX_UPSTREAM_BODY)
        .await
        .map_err(|e| Error::UpstreamFailed(format!("reading the upstream answer: {e}")))?;
    Ok((status, bytes))
}

/// An embeddings request's `input` and `dimensions` as the OpenAI API takes them:
/// `input` a string, an array of strings, an array of token ids, or an array of such
/// arrays (none empty); `dimensions` a positive integer (whether the model has that
/// many is the model server's to say).
fn check_embeddings(req: &Value) -> Result<()> {
    let tokens = |a: &[Value]| !a.is_empty() && a.iter().all(|t| t.as_u64().is_some());
    let ok = match req.get("input") {
        Some(Value::String(_)) => true,
        Some(Value::Array(a)) if !a.is_empty() => {
            a.iter().all(Value::is_string)
                || tokens(a)
                || a.iter().all(|x| x.as_array().is_some_and(|t| tokens(t)))
        }
        _ => false,
    };
    if !ok {
        return Err(Error::invalid_param(
            "input",
            "'input' must be a string, an array of strings, an array of token ids, or an array of arrays of token ids (none empty)",
        ));
    }
    match req.get("dimensions") {
        None | Some(Value::Null) => Ok(()),
        Some(d) if d.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(_) => Err(Error::invalid_param(
            "dimensions",
            "'dimensions' must be a positive integer",
        )),
    }
}

/// `Prefer: wait=N` (RFC 7240), among other preferences: the values of every `Prefer`
/// header of the request.
pub fn prefer_wait<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            // A preference may carry parameters after ';' (RFC 7240 section 2).
            let pref = p.split(';').next().unwrap_or("");
            let (k, v) = pref.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .map(|n| n.min(MAX_WAIT_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_take_every_input_form_of_the_openai_api() {
        for input in [
            json!("text"),
            json!(["a", "b"]),
            json!([1, 2, 3]),
            json!([[1, 2], [3]]),
        ] {
            assert!(
                check_embeddings(&json!({"input": input})).is_ok(),
                "{input}"
            );
        }
        for input in [
            json!(null),
            json!([]),
            json!([[]]),
            json!([1, "a"]),
            json!([-1]),
            json!([1.5]),
            json!([[1], "a"]),
            json!({"a": 1}),
        ] {
            let e = check_embeddings(&json!({"input": input})).unwrap_err();
            assert!(
                matches!(e, Error::Invalid { param: Some(ref p), .. } if p == "input"),
                "{input}"
            );
        }
        assert!(check_embeddings(&json!({"input": "x", "dimensions": 4})).is_ok());
        for d in [json!(0), json!(-2), json!(1.5), json!("4")] {
            let e = check_embeddings(&json!({"input": "x", "dimensions": d})).unwrap_err();
            assert!(
                matches!(e, Error::Invalid { param: Some(ref p), .. } if p == "dimensions"),
                "{d}"
            );
        }
    }

    #[test]
    fn prefer_wait_parses_rfc7240() {
        assert_eq!(prefer_wait([]), None);
        assert_eq!(prefer_wait(["respond-async, wait=30"]), Some(30));
        assert_eq!(prefer_wait(["wait=100000"]), Some(900));
        assert_eq!(prefer_wait(["wait=soon"]), None);
        assert_eq!(prefer_wait(["wait=10; foo=bar, return=minimal"]), Some(10));
        assert_eq!(
            prefer_wait(["handling=lenient;wait=3"]),
            None,
            "a parameter of another preference"
        );
        assert_eq!(prefer_wait(["handling=lenient", "wait=4"]), Some(4));
    }
}
