//! Renting: choose the candidate offers, write the intent (the rental, `provisioning`,
//! and its hold) before the provider is asked, then create the instance; on "no
//! capacity" move the same rental and its hold to the next candidate; on an unknown
//! outcome look for the instance by its label once before failing.

use super::{lifecycle, RentRequest, RentTarget, Rentals, IDEMPOTENCY_WINDOW_MS, MAX_CANDIDATES};
use crate::error::{Error, Result};
use crate::guards;
use crate::ids;
use crate::ledger;
use crate::model::{Offer, Rental, RentalState, TerminationReason};
use crate::providers::{CreateInstance, Instance, InstanceState, ProviderError};

/// How many failed attempts one Idempotency-Key may retry under derived ids before a
/// retry gets a random one.
const MAX_RETRY_IDS: usize = 64;

impl Rentals {
    /// The offers a request may use, best first.
    fn candidates(&self, req: &RentRequest) -> Result<Vec<Offer>> {
        match &req.target {
            RentTarget::Offer(id) => {
                let o = self.market.get(id).ok_or_else(|| {
                    if self.market.was_offered(id) {
                        Error::conflict(
                            "offer_unavailable",
                            format!("offer '{id}' is no longer offered"),
                        )
                    } else {
                        Error::OfferNotFound(format!(
                            "no offer with id '{id}': list offers with GET /v1/gpus/offers"
                        ))
                    }
                })?;
                if o.available == 0 {
                    return Err(Error::conflict(
                        "no_capacity",
                        format!("offer '{id}' has no machine left"),
                    ));
                }
                if let Some(max) = req.max_price_per_hour {
                    if o.price_per_hour > max {
                        return Err(Error::conflict(
                            "price_moved",
                            format!(
                                "offer '{id}' now costs {} USD/h, above max_price_per_hour {}",
                                o.price_per_hour, max
                            ),
                        ));
                    }
                }
                Ok(vec![o])
            }
            RentTarget::Cheapest(f) => {
                let mut f = f.clone();
                if req.max_price_per_hour.is_some() {
                    f.max_price = req.max_price_per_hour;
                }
                if req.model.is_some() {
                    // A deployment needs a provider that runs its model server.
                    f.exclude_providers
                        .extend(self.providers_without_model_servers());
                }
                let v = self.market.cheapest(&f, MAX_CANDIDATES);
                if v.is_empty() {
                    return Err(Error::conflict(
                        "no_capacity",
                        "no available offer matches the request".to_string(),
                    ));
                }
                Ok(v)
            }
        }
    }

    /// Rents a GPU: writes the rental and its hold, then asks the provider; on "no
    /// capacity" moves the same rental (and its hold) to the next candidate.
    pub async fn rent(&self, account_id: &str, req: RentRequest) -> Result<Rental> {
        let mut req = req;
        if let Some(base) = req.id.take() {
            // A retry of a rent whose answer was lost (a crash before it was stored)
            // gets that rental. One whose earlier attempt failed (a 503, not stored, so
            // it may be retried) or was abandoned rents anew under the next id derived
            // from the same nonce (`rnt_N`, `rnt_N_1`, ...): a later retry walks the same
            // ids and finds the new rental instead of making a second one.
            for k in 0..MAX_RETRY_IDS {
                let id = if k == 0 {
                    base.clone()
                } else {
                    format!("{base}_{k}")
                };
                let Ok(r) = self.get(Some(account_id), &id).await else {
                    req.id = Some(id);
                    break;
                };
                let failed = r.state == RentalState::Failed;
                let stale = self.clock.now() - r.created_at >= IDEMPOTENCY_WINDOW_MS;
                // The attempt that wrote this intent died with an earlier process
                // before the provider answered: nothing will ever create its instance
                // (one created late is an orphan the sweep destroys). It fails now, for
                // nothing, and the retry rents anew instead of answering a rental that
                // would only fail after the create grace.
                let abandoned = r.state == RentalState::Provisioning
                    && r.instance_id.is_none()
                    && r.updated_at < self.boot_at;
                if abandoned {
                    self.fail_provisioning(
                        &r.id,
                        TerminationReason::ProviderError,
                        "spotd stopped before the provider answered; retried as a new rental"
                            .into(),
                        true,
                    )
                    .await?;
                } else if !failed && !stale {
                    return Ok(r);
                }
            }
        }
        let candidates = self.candidates(&req)?;
        let rental = self.create_intent(account_id, &req, &candidates[0]).await?;
        let mut last_err = ProviderError::NoCapacity;
        for (i, offer) in candidates.iter().enumerate() {
            let mut rental = rental.clone();
            if i > 0 {
                rental = match self.move_to_offer(&rental.id, offer.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        let msg = e.to_string();
                        self.update(&rental.id, None, move |tx, a, r, now| {
                            lifecycle::fail(
                                tx,
                                a,
                                r,
                                TerminationReason::ProvisionFailed,
                                Some(msg),
                                now,
                            )
                        })
                        .await?;
                        return Err(e);
                    }
                };
            }
            let provider = match self.provider(&offer.provider) {
                Ok(p) => p,
                Err(_) => {
                    last_err = ProviderError::Rejected(format!(
                        "provider '{}' is not configured",
                        offer.provider
                    ));
                    continue;
                }
            };
            let create = CreateInstance {
                offer_id: offer.native_id.clone(),
                label: rental.id.clone(),
                image: req.image.clone(),
                model: req.model.clone(),
                ssh_public_key: req.ssh_public_key.clone(),
                env: req.env.clone(),
                gpu_count: offer.gpu_count,
            };
            match provider.create_instance(&create).await {
                Ok(inst) => {
                    self.registry.refresh_now(&offer.provider);
                    return self.adopt(&rental.id, inst).await;
                }
                Err(ProviderError::NoCapacity) => {
                    self.registry.refresh_now(&offer.provider);
                    last_err = ProviderError::NoCapacity;
                    continue;
                }
                // This provider refused this request (an option it does not support,
                // an offer it no longer has): another candidate may take it.
                Err(e @ ProviderError::Rejected(_)) => {
                    last_err = e;
                    continue;
                }
                Err(ProviderError::Unavailable(msg)) => {
                    // The outcome is unknown: the instance may exist. Look for our label
                    // once; if it is not there, fail the rental (a late instance is an
                    // orphan the reconciler terminates).
                    if let Ok(list) = provider.list_instances().await {
                        if let Some(inst) = list.into_iter().find(|i| i.label == rental.id) {
                            return self.adopt(&rental.id, inst).await;
                        }
                    }
                    last_err = ProviderError::Unavailable(msg);
                    break;
                }
                Err(e) => {
                    last_err = e;
                    break;
                }
            }
        }
        let (status, reason) = match &last_err {
            ProviderError::NoCapacity => (
                Error::conflict(
                    "no_capacity",
                    "every matching offer ran out of capacity; try again or widen the request",
                ),
                TerminationReason::ProvisionFailed,
            ),
            e => (
                Error::ProviderUnavailable(format!(
                    "the provider could not create the instance: {e}"
                )),
                TerminationReason::ProviderError,
            ),
        };
        // A DELETE during the attempts may already have ended it.
        self.fail_provisioning(&rental.id, reason, last_err.to_string(), false)
            .await?;
        Err(status)
    }

    /// Ends a rental that is still provisioning as `failed` (nothing charged, its hold
    /// released). One that moved on meanwhile is left as it is: ended by a DELETE, or,
    /// with `unless_adopted`, given an instance by an adoption.
    pub(crate) async fn fail_provisioning(
        &self,
        id: &str,
        reason: TerminationReason,
        message: String,
        unless_adopted: bool,
    ) -> Result<Rental> {
        let (r, ()) = self
            .update(id, None, move |tx, a, r, now| {
                if r.state != RentalState::Provisioning
                    || (unless_adopted && r.instance_id.is_some())
                {
                    return Ok(());
                }
                lifecycle::fail(tx, a, r, reason, Some(message), now)
            })
            .await?;
        Ok(r)
    }

    async fn create_intent(
        &self,
        account_id: &str,
        req: &RentRequest,
        offer: &Offer,
    ) -> Result<Rental> {
        let account_id = account_id.to_string();
        let req = req.clone();
        let offer = offer.clone();
        let cfg = self.cfg.clone();
        let clock = self.clock.clone();
        let written = self
            .store
            .write(move |tx| {
                let mut a = tx.account(&account_id)?.ok_or(Error::AccountGone)?;
                let active = tx.count_active(&account_id)?;
                if active >= u64::from(cfg.max_active_rentals_per_account) {
                    return Err(Error::conflict(
                        "too_many_rentals",
                        format!(
                            "the account already has {active} active rentals (limit {})",
                            cfg.max_active_rentals_per_account
                        ),
                    ));
                }
                let now = clock.now();
                let id = req.id.unwrap_or_else(|| ids::new_id("rnt"));
                let hold = ledger::hold_for(offer.price_per_hour, cfg.min_session_seconds);
                // The caps are checked in the transaction that places the hold, so
                // parallel rents cannot pass one together. A refusal commits (its report
                // may write) and is answered after.
                if let Some(refused) =
                    guards::check_rent(tx, &a, offer.price_per_hour, hold, None, now)?
                {
                    return Ok(Err(refused));
                }
                let mut r = Rental {
                    model: req.model,
                    name: req.name,
                    image: req.image,
                    ssh_public_key: req.ssh_public_key,
                    env: req.env,
                    idle_timeout_seconds: req.idle_timeout_seconds,
                    max_duration_seconds: req.max_duration_seconds,
                    max_cost: req.max_cost,
                    ..Rental::intent(id, account_id, offer, hold, now)
                };
                ledger::place_hold(tx, &mut a, &mut r, now)?;
                tx.put_rental(&r)?;
                tx.put_account(&a)?;
                Ok(Ok(r))
            })
            .await?;
        written
    }

    /// Re-points a provisioning rental at another offer: the old hold is released and
    /// the new one placed, in one transaction.
    async fn move_to_offer(&self, id: &str, offer: Offer) -> Result<Rental> {
        let min = self.cfg.min_session_seconds;
        let (r, refused) = self
            .update(id, None, move |tx, a, r, now| {
                if r.state != RentalState::Provisioning || r.instance_id.is_some() {
                    return Err(Error::conflict(
                        "invalid_state",
                        format!("rental {} is {}", r.id, r.state.as_str()),
                    ));
                }
                // Check before writing: the new hold must fit once the old one is freed,
                // and the new price within the account's caps.
                let new_hold = ledger::hold_for(offer.price_per_hour, min);
                if new_hold > a.available() + r.held() {
                    return Err(Error::InsufficientCredit(format!(
                        "insufficient credit: the next offer needs a hold of {new_hold} USD"
                    )));
                }
                if let Some(refused) =
                    guards::check_rent(tx, a, offer.price_per_hour, new_hold, Some(r), now)?
                {
                    return Ok(Some(refused));
                }
                ledger::release_hold(tx, a, r, now)?;
                r.provider = offer.provider.clone();
                r.price_per_hour = offer.price_per_hour;
                r.hold = ledger::hold_for(offer.price_per_hour, min);
                r.offer = offer;
                ledger::place_hold(tx, a, r, now)?;
                Ok(None)
            })
            .await?;
        match refused {
            Some(e) => Err(e),
            None => Ok(r),
        }
    }

    /// Records the provider's instance for a rental. A rental that ended meanwhile
    /// (failed: the workers gave up on a slow create) does not take it: the instance is
    /// terminated and the rent fails with `ProviderUnavailable`.
    async fn adopt(&self, id: &str, inst: Instance) -> Result<Rental> {
        let iid = inst.id.clone();
        let (r, taken) = self
            .update(id, None, move |_tx, _a, r, now| {
                if r.state.is_terminal() {
                    return Ok(false);
                }
                r.instance_id = Some(inst.id.clone());
                if r.state == RentalState::Provisioning && inst.state == InstanceState::Running {
                    lifecycle::mark_running(r, &inst, now)?;
                }
                Ok(true)
            })
            .await?;
        if !taken {
            if let Ok(p) = self.provider(&r.provider) {
                let _ = p.terminate(&iid).await;
            }
            return Err(Error::ProviderUnavailable(format!(
                "the provider answered too late: rental {} had already {}",
                r.id,
                r.state.as_str()
            )));
        }
        Ok(r)
    }
}
