//! Deployments: a cold model served from the caller's own rental. One deployment per
//! (account, model) however many requests arrive at once (a lock per pair around the
//! cold start), readiness (traffic only once the instance runs *and* its model server
//! answers), the proxy to it with its own key, activity for the idle reaper, and
//! redeploying after a preemption.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::catalog::{ColdModel, Model};
use super::reaper::Activity;
use super::stream::SseMeter;
use super::{read_all, Answer, Endpoint, Inference};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids;
use crate::market::OfferFilter;
use crate::model::{Rental, RentalState};
use crate::rentals::{RentRequest, RentTarget, Rentals};
use crate::tasks::Tasks;

/// The environment variable that carries a deployment's own API key to its model
/// server; spotd sends it as `Authorization: Bearer` to that deployment only.
pub const DEPLOYMENT_KEY_ENV: &str = "VLLM_API_KEY";

/// The key spotd sends to a deployment (none for deployments started before keys).
fn deployment_key(r: &Rental) -> Option<&str> {
    r.env.get(DEPLOYMENT_KEY_ENV).map(String::as_str)
}

/// Serializes cold starts of one (account, model).
pub(super) type DeployLock = Arc<tokio::sync::Mutex<()>>;

/// Where a model stands for one caller.
pub(super) enum Status {
    Ready(Rental),
    Deploying(Rental),
    Cold,
}

impl Inference {
    pub(crate) fn forget_ready(&self, rental: &str) {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rental);
    }

    /// The caller's live deployments, by model.
    pub(super) async fn deployments(&self, account: &str) -> Result<BTreeMap<String, Rental>> {
        let acct = account.to_string();
        // The account's live rentals only (an index), never its whole history.
        let mut all = self
            .store
            .read(move |rx| rx.account_live_rentals(&acct))
            .await?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
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
            let fresh = self
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.id.clone(), endpoint.clone())
                .is_none();
            if fresh {
                self.record_ready(&r.id);
            }
        }
        ok
    }

    /// Whether this process already found the deployment ready at its endpoint.
    pub(super) fn known_ready(&self, r: &Rental) -> bool {
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        r.endpoint
            .as_ref()
            .is_some_and(|e| ready.get(&r.id).is_some_and(|at| at == e))
    }

    /// Records `deployment.ready` in the background (once per deployment: the store
    /// keeps a marker, so a restart that probes it ready again records nothing).
    fn record_ready(&self, rental: &str) {
        let (store, clock, id) = (self.store.clone(), self.clock.clone(), rental.to_string());
        self.tasks.spawn(async move {
            let now = clock.now();
            let rid = id.clone();
            let res = store
                .write(move |tx| crate::webhooks::events::record_deployment_ready(tx, &rid, now))
                .await;
            if let Err(e) = res {
                tracing::warn!(rental = %id, error = %e, "could not record deployment.ready");
            }
        });
    }

    /// Probes the running deployments not yet known ready, all at once (each probe is
    /// short): a deployment becomes ready, and `deployment.ready` is sent, without a
    /// request having to ask. Answers whether some are still not ready.
    pub(super) async fn probe_unready(&self, running: Vec<Rental>) -> bool {
        let unready: Vec<Rental> = running
            .into_iter()
            .filter(|r| !self.known_ready(r))
            .collect();
        let probes = unready.iter().map(|r| self.is_ready(r));
        let ready = futures_util::future::join_all(probes).await;
        ready.iter().any(|ok| !ok)
    }

    pub(super) async fn status_of(&self, r: Option<Rental>) -> Status {
        match r {
            None => Status::Cold,
            Some(r) if self.is_ready(&r).await => Status::Ready(r),
            Some(r) => Status::Deploying(r),
        }
    }

    pub(super) async fn status(&self, account: &str, model: &str) -> Result<Status> {
        let r = self.deployments(account).await?.remove(model);
        Ok(self.status_of(r).await)
    }

    /// Seconds until a deploying rental should be ready: the estimate minus the time
    /// already spent, at least 1.
    pub(super) fn eta(&self, r: &Rental) -> u64 {
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
    pub(super) async fn ensure_deployment(&self, account: &str, m: &ColdModel) -> Result<Status> {
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
            max_cost: None,
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

    pub(super) async fn proxy_deployment(
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
