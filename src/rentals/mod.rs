//! Rentals: rent (`rent`), teardown (`teardown`), activity, and the provider round
//! trips around them. This file holds the shared pieces: the configuration, the
//! request type, reads, and `update` (one rental and its account in one transaction).
//!
//! Intent is written before side effects: a rental (state `provisioning`, hold placed)
//! is committed before the provider is asked for an instance, and the instance is
//! labelled with the rental id, so a crash at any point leaves something the
//! reconciler can finish. The workers in `workers::rentals` drive the rest of the
//! state machine (`lifecycle`).

pub mod lifecycle;
mod rent;
mod teardown;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::clock::{Clock, Millis};
use crate::error::{Error, Result};
use crate::market::{Market, OfferFilter};
use crate::model::{Account, Rental, RentalState, TerminationReason};
use crate::money::Usd;
use crate::providers::registry::Registry;
use crate::providers::Provider;
use crate::store::{Store, Tx};

/// An Idempotency-Key answers for the same object this long (SPEC: 24 h).
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// How many offers a rent by criteria tries when providers answer "no capacity".
pub const MAX_CANDIDATES: usize = 5;

/// What is told about a preempted deployment.
type PreemptedHook = Box<dyn Fn(Rental) + Send + Sync>;

#[derive(Clone, Debug)]
pub struct RentalsConfig {
    pub min_session_seconds: u64,
    pub metering_interval_seconds: u64,
    pub provision_timeout_seconds: u64,
    pub max_active_rentals_per_account: u32,
    /// A provisioning rental with no instance id is only judged lost after this long
    /// (a create call may still be in flight).
    pub create_grace_ms: i64,
}

/// What to rent: a chosen offer, or the cheapest offer matching criteria.
#[derive(Clone, Debug)]
pub enum RentTarget {
    Offer(String),
    Cheapest(OfferFilter),
}

#[derive(Clone, Debug)]
pub struct RentRequest {
    pub target: RentTarget,
    pub max_price_per_hour: Option<Usd>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub ssh_public_key: Option<String>,
    pub env: BTreeMap<String, String>,
    pub idle_timeout_seconds: Option<u64>,
    pub max_duration_seconds: Option<u64>,
    /// The most the rental may cost (SPEC section 6); torn down with `max_cost` there.
    pub max_cost: Option<Usd>,
    /// Set for model deployments (cold starts).
    pub model: Option<String>,
    /// The rental id to use (derived from an Idempotency-Key); a rental that already
    /// has it is answered instead of renting again.
    pub id: Option<String>,
}

#[derive(Clone)]
pub struct Rentals {
    pub(crate) store: Store,
    pub(crate) market: Market,
    pub(crate) registry: Arc<Registry>,
    pub(crate) clock: Clock,
    pub(crate) cfg: RentalsConfig,
    /// Told about every deployment (rental with `model`) that was preempted.
    preempted: Arc<std::sync::OnceLock<PreemptedHook>>,
    /// When this process started renting: a provisioning intent last written before
    /// it has no create call in flight any more.
    boot_at: Millis,
}

impl Rentals {
    pub fn new(
        store: Store,
        market: Market,
        registry: Arc<Registry>,
        clock: Clock,
        cfg: RentalsConfig,
    ) -> Rentals {
        Rentals {
            boot_at: clock.now(),
            store,
            market,
            registry,
            clock,
            cfg,
            preempted: Arc::default(),
        }
    }

    /// Preempted deployments are given to `hook` (inference redeploys them).
    pub fn on_preempted(&self, hook: impl Fn(Rental) + Send + Sync + 'static) {
        let _ = self.preempted.set(Box::new(hook));
    }

    pub(crate) fn notify_preempted(&self, r: &Rental) {
        if r.model.is_some() && r.termination_reason == Some(TerminationReason::Preempted) {
            if let Some(hook) = self.preempted.get() {
                hook(r.clone());
            }
        }
    }

    /// The configured providers a cold model cannot deploy on (see
    /// [`Provider::serves_models`]).
    pub fn providers_without_model_servers(&self) -> Vec<String> {
        self.registry
            .all()
            .into_iter()
            .filter(|(_, p)| !p.serves_models())
            .map(|(c, _)| c.name)
            .collect()
    }

    fn provider(&self, name: &str) -> Result<Arc<dyn Provider>> {
        self.registry.get(name).ok_or_else(|| {
            Error::ProviderUnavailable(format!("provider '{name}' is not configured"))
        })
    }

    /// Runs `f` on the rental and its account in one transaction and writes both back.
    /// `account_id` restricts it to that account's rentals (`NotFound` otherwise).
    pub async fn update<R, F>(
        &self,
        id: &str,
        account_id: Option<&str>,
        f: F,
    ) -> Result<(Rental, R)>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>, &mut Account, &mut Rental, Millis) -> Result<R> + Send + 'static,
    {
        let id = id.to_string();
        let owner = account_id.map(str::to_string);
        let clock = self.clock.clone();
        self.store
            .write(move |tx| {
                let mut r = tx
                    .rental(&id)?
                    .filter(|r| owner.as_deref().is_none_or(|o| o == r.account_id))
                    .ok_or_else(|| Error::NotFound(format!("no rental with id '{id}'")))?;
                let mut a = tx
                    .account(&r.account_id)?
                    .ok_or_else(|| Error::Bug(format!("rental {id} names a missing account")))?;
                let now = clock.now();
                let out = f(tx, &mut a, &mut r, now)?;
                r.updated_at = now;
                tx.put_rental(&r)?;
                tx.put_account(&a)?;
                Ok((r, out))
            })
            .await
    }

    pub async fn get(&self, account_id: Option<&str>, id: &str) -> Result<Rental> {
        let id = id.to_string();
        let owner = account_id.map(str::to_string);
        self.store
            .read(move |rx| {
                rx.rental(&id)?
                    .filter(|r| owner.as_deref().is_none_or(|o| o == r.account_id))
                    .ok_or_else(|| Error::NotFound(format!("no rental with id '{id}'")))
            })
            .await
    }

    /// A page of an account's rentals (all accounts' for `None`), newest first, strictly
    /// before the `(created_at, id)` cursor `after`, at most `limit`: read from an index,
    /// O(page) (a state filter reads on until the page is full).
    pub async fn page(
        &self,
        account_id: Option<&str>,
        state: Option<RentalState>,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Rental>> {
        let owner = account_id.map(str::to_string);
        let keep = move |r: &Rental| state.is_none_or(|s| r.state == s);
        self.store
            .read(move |rx| {
                let before = after.as_ref().map(|(t, id)| (*t, id.as_str()));
                match owner {
                    Some(o) => rx.account_rentals_page(&o, before, limit, keep),
                    None => rx.rentals_page(before, limit, keep),
                }
            })
            .await
            .map_err(Error::from)
    }

    /// `POST .../activity`: resets the idle clock of a running rental.
    pub async fn touch(&self, account_id: &str, id: &str) -> Result<Rental> {
        let (r, ()) = self
            .update(id, Some(account_id), |_tx, _a, r, now| {
                if r.state.is_terminal() || r.state == RentalState::Terminating {
                    return Err(Error::conflict(
                        "invalid_state",
                        format!("rental {} is {}", r.id, r.state.as_str()),
                    ));
                }
                r.last_activity_at = Some(now);
                Ok(())
            })
            .await?;
        Ok(r)
    }
}

/// Retry delay after `attempts` failed provider calls: 1 s doubling to 60 s.
pub fn backoff_ms(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(6);
    (1000i64 << exp).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(7), 60_000);
        assert_eq!(backoff_ms(40), 60_000);
    }
}
