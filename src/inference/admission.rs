//! Admission for hosted requests: before a request is sent upstream, its largest
//! possible cost (the input, estimated from the body's size, and `max_tokens` of output,
//! or `billing.hosted_reserve_output_tokens`) is reserved against the account's
//! `available` credit; the exact cost is charged once the answer's usage is known, and
//! only then is the reservation let go. Parallel hosted requests on a nearly empty
//! account so never get answers that cannot be charged: the ones that do not fit get
//! 402.
//!
//! Reservations live in memory (they last as long as their request, which a crash ends
//! anyway), not in the ledger, so a rental's hold or its metering does not see them: a
//! rent placed while a request is in flight can still leave that request's charge
//! capped at what is left (the README says so). They are taken and let go under one async lock, with the
//! account read inside it, so a charge landing cannot be counted twice or not at all.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::money::Usd;
use crate::store::Store;

#[derive(Default)]
pub(crate) struct Admission {
    reserved: tokio::sync::Mutex<HashMap<String, Usd>>,
}

/// A reservation; [`Reserved::release`] lets it go (dropping it does too, in the
/// background, for a request that ended in an error before its charge).
pub(crate) struct Reserved {
    admission: Arc<Admission>,
    account: String,
    amount: Usd,
    released: bool,
}

impl Admission {
    /// Reserves `estimate` of `account`'s available credit, or refuses with 402.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        store: &Store,
        account: &str,
        estimate: Usd,
    ) -> Result<Reserved> {
        let estimate = estimate.max(Usd(1));
        let mut reserved = self.reserved.lock().await;
        let a = crate::accounts::get_account(store, account).await?;
        let taken = reserved.get(account).copied().unwrap_or(Usd::ZERO);
        let free = a.available() - taken;
        if free < estimate {
            return Err(Error::InsufficientCredit(format!(
                "insufficient credit: this request may cost up to {estimate} (its input and \
                 max_tokens of output) and {free} is available; add credit or lower max_tokens"
            )));
        }
        *reserved.entry(account.to_string()).or_default() += estimate;
        Ok(Reserved {
            admission: self.clone(),
            account: account.to_string(),
            amount: estimate,
            released: false,
        })
    }

    async fn give_back(&self, account: &str, amount: Usd) {
        let mut reserved = self.reserved.lock().await;
        if let Some(r) = reserved.get_mut(account) {
            *r -= amount;
            if *r <= Usd::ZERO {
                reserved.remove(account);
            }
        }
    }

    /// What is reserved for `account` now (tests).
    #[cfg(test)]
    pub(crate) async fn reserved(&self, account: &str) -> Usd {
        self.reserved
            .lock()
            .await
            .get(account)
            .copied()
            .unwrap_or(Usd::ZERO)
    }
}

impl Reserved {
    /// Lets the reservation go, once the request's charge is durable (or it is known
    /// that there is none).
    pub(crate) async fn release(mut self) {
        self.released = true;
        self.admission.give_back(&self.account, self.amount).await;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.released {
            let (admission, account, amount) =
                (self.admission.clone(), self.account.clone(), self.amount);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { admission.give_back(&account, amount).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reservations_never_exceed_available_and_are_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let clock = Clock::manual(1_000);
        let (a, _) = crate::accounts::create_account(&store, &clock, "t", Usd(100))
            .await
            .unwrap();
        let adm = Arc::new(Admission::default());
        let r1 = adm.reserve(&store, &a.id, Usd(60)).await.unwrap();
        assert!(
            adm.reserve(&store, &a.id, Usd(41)).await.is_err(),
            "60 + 41 > 100"
        );
        let r2 = adm.reserve(&store, &a.id, Usd(40)).await.unwrap();
        assert_eq!(adm.reserved(&a.id).await, Usd(100));
        r1.release().await;
        assert_eq!(adm.reserved(&a.id).await, Usd(40));
        // Dropped without release (an upstream error): given back in the background.
        drop(r2);
        for _ in 0..500 {
            if adm.reserved(&a.id).await == Usd::ZERO {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(adm.reserved(&a.id).await, Usd::ZERO);
        assert!(adm.reserve(&store, &a.id, Usd(100)).await.is_ok());
    }
}
