//! Teardown: billing stops when it is asked for, the provider is asked to terminate,
//! and the rental is `terminated` only once the provider confirms; failed attempts
//! back off ([`super::backoff_ms`]) and the rental worker retries them.

use super::{backoff_ms, lifecycle, Rentals};
use crate::error::Result;
use crate::model::{Rental, RentalState, TerminationReason};

impl Rentals {
    /// Starts a teardown: billing stops now, the hold is released, and the provider is
    /// asked to terminate. The rental is `terminated` only once the provider confirms.
    pub async fn teardown(
        &self,
        account_id: Option<&str>,
        id: &str,
        reason: TerminationReason,
    ) -> Result<Rental> {
        let (r, ()) = self
            .update(id, account_id, move |tx, a, r, now| {
                lifecycle::begin_teardown(tx, a, r, reason, now)
            })
            .await?;
        // One immediate attempt; the rental worker retries with backoff after this.
        Ok(self.try_terminate(r).await)
    }

    /// Asks the provider to terminate a `terminating` rental's instance once, and
    /// confirms termination when the provider says the instance is gone.
    pub async fn try_terminate(&self, r: Rental) -> Rental {
        if r.state != RentalState::Terminating {
            return r;
        }
        let Some(instance_id) = r.instance_id.clone() else {
            return r;
        };
        let provider = match self.provider(&r.provider) {
            Ok(p) => p,
            Err(_) => return r,
        };
        let outcome = provider.terminate(&instance_id).await;
        let confirmed = match &outcome {
            Ok(None) => true,
            Ok(Some(i)) => i.state.is_gone(),
            Err(_) => false,
        };
        let (gone, err) = match outcome {
            Ok(i) => (i, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let res = self
            .update(&r.id, None, move |tx, a, r, now| {
                if r.state != RentalState::Terminating {
                    return Ok(());
                }
                if confirmed {
                    lifecycle::confirm_gone(tx, a, r, gone.as_ref(), now)
                } else {
                    r.attempts += 1;
                    r.next_attempt_at = now + backoff_ms(r.attempts);
                    if err.is_some() {
                        r.last_error = err;
                    }
                    Ok(())
                }
            })
            .await;
        match res {
            Ok((r, ())) => {
                if r.state == RentalState::Terminated {
                    // The machine is free again: show it in the market now, not at the
                    // provider's next scheduled refresh.
                    self.registry.refresh_now(&r.provider);
                }
                r
            }
            Err(e) => {
                tracing::warn!(rental = %r.id, error = %e, "could not record a teardown attempt");
                r
            }
        }
    }
}
