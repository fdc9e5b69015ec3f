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

pub mod catalog;
pub mod reaper;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::http_client::{HttpClient, HttpError, Upstream};
use crate::ids;
use crate::ledger;
use crate::market::{Market, OfferFilter};
use crate::model::{Rental, RentalState};
use crate::rentals::{RentRequest, RentTarget, Rentals};
use crate::store::Store;
use crate::tasks::Tasks;
use catalog::{token_cost, Catalog, ColdModel, HostedModel, Model};
use reaper::Activity;
use stream::{SseMeter, Usage};

/// Largest upstream answer read whole (non-streaming).
const MAX_UPSTREAM_BODY: usize = 16 * 1024 * 1024;
/// `Prefer: wait=N` is capped here.
const MAX_WAIT_SECONDS: u64 = 900;

#[derive(Clone, Debug)]
pub struct InferenceConfig {
    pub idle_timeout_seconds: u64,
    pub upstream_timeout: Duration,
    /// Expected time from cold start to ready (provisioning + model load).
    pub estimated_deploy_seconds: u64,
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

/// The environment variable that carries a deployment's own API key to its model
/// server; spotd sends it as `Authorization: Bearer` to that deployment only.
pub const DEPLOYMENT_KEY_ENV: &str = "VLLM_API_KEY";

/// The key spotd sends to a deployment (none for deployments started before keys).
fn deployment_key(r: &Rental) -> Option<&str> {
    r.env.get(DEPLOYMENT_KEY_ENV).map(String::as_str)
}

/// Serializes cold starts of one (account, model).
type DeployLock = Arc<tokio::sync::Mutex<()>>;

/// Where a model stands for one caller.
enum Status {
    Ready(Rental),
    Deploying(Rental),
    Cold,
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
    /// The model is being deployed: ready in about `eta_seconds`.
    Deploying { model: String, eta_seconds: u64 },
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
        }
    }

    pub(crate) fn forget_ready(&self, rental: &str) {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rental);
    }

    /// The caller's live deployments, by model.
    async fn deployments(&self, account: &str) -> Result<BTreeMap<String, Rental>> {
        let acct = account.to_string();
        let all = self.store.read(move |rx| rx.account_rentals(&acct)).await?;
        let mut out = BTreeMap::new();
        for r in all {
            if let (Some(m), RentalState::Provisioning | RentalState::Running) =
                (r.model.clone(), r.state)
            {
                // Newest wins (rentals come oldest first).
                out.insert(m, r);
            }
        }
        Ok(out)
    }

    /// Instance running and model server answering: traffic may go there.
    async fn is_ready(&self, r: &Rental) -> bool {
        if r.state != RentalState::Running {
            return false;
        }
        let Some(endpoint) = &r.endpoint else {
            return false;
        };
        if self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.id)
            .is_some_and(|at| at == endpoint)
        {
            return true;
        }
        let ok = matches!(
            self.probe
                .get(&format!("{endpoint}/models"), deployment_key(r))
                .await,
            Ok(resp) if resp.status.is_success()
        );
        if ok {
            self.ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.id.clone(), endpoint.clone());
        }
        ok
    }

    async fn status_of(&self, r: Option<Rental>) -> Status {
        match r {
            None => Status::Cold,
            Some(r) if self.is_ready(&r).await => Status::Ready(r),
            Some(r) => Status::Deploying(r),
        }
    }

    async fn status(&self, account: &str, model: &str) -> Result<Status> {
        let r = self.deployments(account).await?.remove(model);
        Ok(self.status_of(r).await)
    }

    /// Seconds until a deploying rental should be ready: the estimate minus the time
    /// already spent, at least 1.
    fn eta(&self, r: &Rental) -> u64 {
        let spent = ((self.clock.now() - r.created_at).max(0) / 1000) as u64;
        self.cfg
            .estimated_deploy_seconds
            .saturating_sub(spent)
            .max(5)
    }

    fn lock_for(&self, account: &str, model: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((account.to_string(), model.to_string()))
            .or_default()
            .clone()
    }

    /// One deployment per (account, model): returns the live one or starts one (hold,
    /// cheapest fitting offer, rental with `model` set).
    async fn ensure_deployment(&self, account: &str, m: &ColdModel) -> Result<Status> {
        let lock = self.lock_for(account, &m.id);
        let _guard = lock.lock().await;
        match self.status(account, &m.id).await? {
            Status::Cold => {}
            s => return Ok(s),
        }
        let mut env = BTreeMap::new();
        env.insert("MODEL".to_string(), m.id.clone());
        // The deployment's own key: its model server (vLLM reads VLLM_API_KEY) answers
        // only requests that carry it, and only spotd has it. It is stored with the
        // rental (never shown in views) so it survives a restart.
        env.insert(DEPLOYMENT_KEY_ENV.to_string(), ids::random_token(40));
        let req = RentRequest {
            target: RentTarget::Cheapest(OfferFilter {
                min_total_vram_gb: Some(m.min_vram_gb),
                ..OfferFilter::default()
            }),
            max_price_per_hour: None,
            name: Some(format!("deployment of {}", m.id)),
            image: m.image.clone(),
            ssh_public_key: None,
            env,
            idle_timeout_seconds: None,
            max_duration_seconds: None,
            model: Some(m.id.clone()),
            id: None,
        };
        match self.rentals.rent(account, req).await {
            Ok(r) => {
                tracing::info!(rental = %r.id, model = %m.id, "cold start");
                crate::metrics::cold_start();
                self.activity.register(&r.id, self.clock.now());
                Ok(if r.state == RentalState::Running && self.is_ready(&r).await {
                    Status::Ready(r)
                } else {
                    Status::Deploying(r)
                })
            }
            Err(Error::Conflict { code: "no_capacity", .. }) => Err(Error::ProviderUnavailable(format!(
                "no spot GPU offer can host model '{}' right now (it needs {} GB of GPU memory); try again later",
                m.id, m.min_vram_gb
            ))),
            Err(e) => Err(e),
        }
    }

    /// After a preemption: deploy the model again on the next cheapest fitting offer.
    pub async fn redeploy(&self, preempted: &Rental) {
        let Some(model) = &preempted.model else {
            return;
        };
        let Some(Model::Cold(m)) = self.catalog.get(model).cloned() else {
            return;
        };
        self.forget_ready(&preempted.id);
        self.activity.forget(&preempted.id);
        match self.ensure_deployment(&preempted.account_id, &m).await {
            Ok(_) => {
                tracing::info!(model = %m.id, account = %preempted.account_id, "redeployed after a preemption")
            }
            Err(e) => {
                tracing::warn!(model = %m.id, error = %e, "redeploy after a preemption failed")
            }
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
                    }),
                    Status::Cold => Ok(Answer::Deploying {
                        model: c.id.clone(),
                        eta_seconds: self.cfg.estimated_deploy_seconds,
                    }),
                }
            }
        }
    }

    async fn proxy_hosted(
        &self,
        account: &str,
        ep: Endpoint,
        h: &HostedModel,
        req: &mut Value,
        stream: bool,
    ) -> Result<Answer> {
        let acct = crate::accounts::get_account(&self.store, account).await?;
        if acct.available() <= crate::money::Usd::ZERO {
            return Err(Error::InsufficientCredit(
                "insufficient credit: add credit to use hosted models".into(),
            ));
        }
        let client_wants_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if stream {
            // Ask for usage so the final chunk can be billed.
            match req.get_mut("stream_options").and_then(Value::as_object_mut) {
                Some(o) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                None => req["stream_options"] = json!({"include_usage": true}),
            }
        }
        let prompt_words = prompt_words(req);
        let request_id = ids::new_id("req");
        let body = serde_json::to_vec(&*req).map_err(|e| Error::Bug(e.to_string()))?;
        let url = format!("{}{}", h.base_url, ep.path());
        let resp = self
            .forward(&url, h.api_key.as_deref(), body, &h.upstream)
            .await?;
        let billing = HostedBilling {
            store: self.store.clone(),
            clock: self.clock.clone(),
            account: account.to_string(),
            model: h.clone(),
            request_id: request_id.clone(),
            prompt_words,
        };
        if stream && resp.is_event_stream() {
            let status = resp.status;
            let tasks = self.tasks.clone();
            let meter = SseMeter::new(
                resp.body,
                !client_wants_usage,
                Box::new(move |o| {
                    let usage = o.usage.unwrap_or(Usage {
                        prompt_tokens: if o.content_chunks > 0 {
                            billing.prompt_words
                        } else {
                            0
                        },
                        completion_tokens: o.content_chunks,
                    });
                    let note = (!o.completed)
                        .then_some("stream cut before the end: billed for what was delivered");
                    tasks.spawn(billing.charge(usage, note));
                }),
            );
            return Ok(Answer::Events {
                status,
                events: meter,
                request_id,
            });
        }
        let (status, bytes) = read_all(resp).await?;
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            if let Some(u) = Usage::from_json(&v) {
                billing.charge(u, None).await;
            }
        }
        Ok(Answer::Json {
            status,
            body: bytes,
            request_id,
        })
    }

    async fn proxy_deployment(
        &self,
        ep: Endpoint,
        r: &Rental,
        req: &Value,
        stream: bool,
    ) -> Result<Answer> {
        let endpoint = r
            .endpoint
            .clone()
            .ok_or_else(|| Error::UpstreamFailed("the deployment has no endpoint".into()))?;
        let request_id = ids::new_id("req");
        let act = self.activity_handle();
        act.activity.begin(&r.id, self.clock.now());
        let body = serde_json::to_vec(req).map_err(|e| Error::Bug(e.to_string()))?;
        let url = format!("{endpoint}{}", ep.path());
        let resp = match self
            .forward(&url, deployment_key(r), body, "deployment")
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                act.end(&r.id);
                return Err(e);
            }
        };
        if stream && resp.is_event_stream() {
            let status = resp.status;
            let rental = r.id.clone();
            let meter = SseMeter::new(resp.body, false, Box::new(move |_| act.end(&rental)));
            return Ok(Answer::Events {
                status,
                events: meter,
                request_id,
            });
        }
        let out = read_all(resp).await;
        act.end(&r.id);
        let (status, bytes) = out?;
        Ok(Answer::Json {
            status,
            body: bytes,
            request_id,
        })
    }

    fn activity_handle(&self) -> ActivityHandle {
        ActivityHandle {
            activity: self.activity.clone(),
            rentals: self.rentals.clone(),
            clock: self.clock.clone(),
            tasks: self.tasks.clone(),
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

/// Ends a deployment's request: activity, throttled persistence.
struct ActivityHandle {
    activity: Arc<Activity>,
    rentals: Rentals,
    clock: Clock,
    tasks: Tasks,
}

impl ActivityHandle {
    fn end(&self, rental: &str) {
        let now = self.clock.now();
        if self.activity.end(rental, now) {
            let rs = self.rentals.clone();
            let id = rental.to_string();
            self.tasks.spawn(async move {
                let res = rs
                    .update(&id, None, move |_tx, _a, r, _now| {
                        r.last_activity_at = Some(r.last_activity_at.unwrap_or(0).max(now));
                        Ok(())
                    })
                    .await;
                if let Err(e) = res {
                    tracing::debug!(rental = %id, error = %e, "could not persist activity");
                }
            });
        }
    }
}

/// Charges a hosted request per token.
struct HostedBilling {
    store: Store,
    clock: Clock,
    account: String,
    model: HostedModel,
    request_id: String,
    prompt_words: u64,
}

impl HostedBilling {
    async fn charge(self, u: Usage, note: Option<&'static str>) {
        let cost = token_cost(&self.model, u.prompt_tokens, u.completion_tokens);
        if cost == crate::money::Usd::ZERO {
            return;
        }
        let mut text = format!(
            "{}: {} input + {} output tokens",
            self.model.id, u.prompt_tokens, u.completion_tokens
        );
        if let Some(n) = note {
            text.push_str("; ");
            text.push_str(n);
        }
        let (acct, rid, clock) = (
            self.account.clone(),
            self.request_id.clone(),
            self.clock.clone(),
        );
        let res = self
            .store
            .write(move |tx| {
                let mut a = tx
                    .account(&acct)?
                    .ok_or_else(|| Error::Bug("account vanished".into()))?;
                let charged = ledger::charge_request(tx, &mut a, cost, &rid, text, clock.now())?;
                tx.put_account(&a)?;
                Ok::<_, Error>(charged)
            })
            .await;
        match res {
            Ok(c) if c < cost => {
                tracing::warn!(request = %self.request_id, due = %cost, charged = %c,
                "hosted request charge capped at the available credit")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request = %self.request_id, error = %e, "hosted request charge failed")
            }
        }
    }
}

pub fn model_not_found(id: &str) -> Error {
    Error::ModelNotFound(format!(
        "The model '{id}' does not exist or you do not have access to it."
    ))
}

/// Whitespace-separated words of the prompt: the estimate of input tokens billed for a
/// stream cut before the upstream reported usage.
fn prompt_words(req: &Value) -> u64 {
    fn text(v: &Value, out: &mut u64) {
        match v {
            Value::String(s) => *out += s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().for_each(|x| text(x, out)),
            Value::Object(o) => {
                for k in ["content", "text", "prompt", "input"] {
                    if let Some(x) = o.get(k) {
                        text(x, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut n = 0;
    for k in ["messages", "prompt", "input"] {
        if let Some(v) = req.get(k) {
            text(v, &mut n);
        }
    }
    n
}

async fn read_all(r: Upstream) -> Result<(u16, Bytes)> {
    let status = r.status;
    let bytes = r
        .bytes(MAX_UPSTREAM_BODY)
        .await
        .map_err(|e| Error::UpstreamFailed(format!("reading the upstream answer: {e}")))?;
    Ok((status, bytes))
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

    #[test]
    fn prompt_words_counts_messages_and_inputs() {
        let v = json!({"messages": [{"role": "user", "content": "hello there world"},
            {"role": "user", "content": [{"type": "text", "text": "two words"}]}]});
        assert_eq!(prompt_words(&v), 5);
        assert_eq!(prompt_words(&json!({"input": ["a b", "c"]})), 3);
    }
}
