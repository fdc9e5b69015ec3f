//! Admission for hosted requests: before a request is sent upstream, its largest
//! possible cost (the input, estimated from the body's size, and `max_tokens` of output,
//! or `billing.hosted_reserve_output_tokens`) is reserved against the account's
//! `available` credit; the exact cost is charged once the answer's usage is known, and
//! only then is the reservation let go. Parallel hosted requests on a nearly empty
//! account so never get answers that cannot be charged: the ones that do not fit get
//! 402. The same reservation is held against the account's monthly budget when it has
//! one (SPEC section 6: what `max_usd_per_month` leaves after this month's charges and
//! the live rentals' holds), so a request past the budget is refused
//! (`spend_limit_exceeded`) rather than charged short.
//!
//! Reservations live in memory (they last as long as their request, which a crash ends
//! anyway), not in the ledger, so a rental's hold or its metering does not see them: a
//! rent placed while a request is in flight can still leave that request's charge
//! capped at what is left (the README says so). The account is read outside the lock
//! (parallel requests do not queue behind each other's reads); what was given back
//! while it read is counted as still taken, so a charge landing is never missed by both
//! the account and the reservations (see `Book`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::money::Usd;
use crate::store::{Balance, Store};

#[derive(Default)]
pub(crate) struct Admission {
    reserved: std::sync::Mutex<Book>,
}

/// What is reserved per account, and how much has been given back in all: a
/// reservation reads the account outside the lock, and counts what was given back
/// while it read as still taken (a charge that landed after the read, whose reservation
/// is already gone, would otherwise be counted by neither). That errs on the safe side
/// by at most the reservations released during one account read.
#[derive(Default)]
struct Book {
    taken: HashMap<String, Usd>,
    given_back: Usd,
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
    /// Reserves `estimate` of `account`'s available credit and of its monthly budget (SPEC
    /// section 6), or refuses with 402 (`InsufficientCredit` / `SpendLimit`).
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        store: &Store,
        account: &str,
        estimate: Usd,
        now: crate::clock::Millis,
    ) -> Result<Reserved> {
        let estimate = estimate.max(Usd(1));
        let seen = self.book().given_back;
        // The committed balance, from memory (the store's writer keeps it); no lock is
        // held across a read.
        let a = store.balance(account).await?.ok_or(Error::AccountGone)?;
        // The guard is released at the end of this block, before anything awaits.
        let refused = {
            let mut book = self.book();
            let taken = book.taken.get(account).copied().unwrap_or(Usd::ZERO);
            // Reservations given back since the read began may belong to charges the
            // read did not see: count them as still taken (each charge is at most its
            // estimate).
            let unseen = Usd(book.given_back.0 - seen.0);
            let free = a.available() - taken - unseen;
            if free < estimate {
                return Err(Error::InsufficientCredit(format!(
                    "insufficient credit: this request may cost up to {estimate} (its input and \
                     max_tokens of output) and {free} is available; add credit or lower max_tokens"
                )));
            }
            // The monthly budget, like the credit: what is left of it after this month's
            // charges, the live rentals' holds and the requests in flight must cover the
            // request's largest cost, so its charge never has to be cut at the cap.
            let budget = crate::guards::hosted_left(&a, now).map(|left| left - taken - unseen);
            match budget {
                Some(b) if b < estimate => Some(budget_refusal(&a, estimate, b, now)),
                _ => {
                    *book.taken.entry(account.to_string()).or_default() += estimate;
                    None
                }
            }
        };
        if let Some(message) = refused {
            let (id, detail) = (account.to_string(), message.clone());
            store
                .write(move |tx| {
                    use crate::guards::{limit_hit, Action, Cap};
                    match tx.account(&id)? {
                        Some(acct) => limit_hit(
                            tx,
                            &acct,
                            Cap::PerMonth,
                            Action::Refused,
                            None,
                            &detail,
                            now,
                        ),
                        None => Ok(()),
                    }
                })
                .await?;
            return Err(Error::SpendLimit(message));
        }
        Ok(Reserved {
            admission: self.clone(),
            account: account.to_string(),
            amount: estimate,
            released: false,
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding it cannot leave the map half-updated (each change is one
        // statement), so a poisoned lock is still a sound one.
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, account: &str, amount: Usd) {
        let mut book = self.book();
        book.given_back += amount;
        if let Some(r) = book.taken.get_mut(account) {
            *r -= amount;
            if *r <= Usd::ZERO {
                book.taken.remove(account);
            }
        }
    }

    /// What is reserved for `account` now (tests).
    #[cfg(test)]
    pub(crate) async fn reserved(&self, account: &str) -> Usd {
        self.book().taken.get(account).copied().unwrap_or(Usd::ZERO)
    }
}

/// What a hosted request refused by the monthly budget is told: that the cap is
/// reached, or what it leaves against what the request may cost.
fn budget_refusal(a: &Balance, estimate: Usd, left: Usd, now: crate::clock::Millis) -> String {
    let cap = a.max_usd_per_month.unwrap_or_default();
    if left <= Usd::ZERO {
        format!(
            "spend limit exceeded: the account's max_usd_per_month of {cap} USD is reached ({} USD spent this month, {} USD held for live rentals)",
            crate::guards::spent_in(a.spend_month, a.month_spent, now),
            a.held
        )
    } else {
        format!(
            "spend limit exceeded: this request may cost up to {estimate} USD (its input and max_tokens of output) and the account's max_usd_per_month of {cap} USD leaves {left} USD this month; lower max_tokens"
        )
    }
}

impl Reserved {
    /// Lets the reservation go, once the request's charge is durable (or it is known
    /// that there is none).
    pub(crate) async fn release(mut self) {
        self.released = true;
        self.admission.give_back(&self.account, self.amount);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.released {
            self.admission.give_back(&self.account, self.amount);
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
        let r1 = adm.reserve(&store, &a.id, Usd(60), 0).await.unwrap();
        assert!(
            adm.reserve(&store, &a.id, Usd(41), 0).await.is_err(),
            "60 + 41 > 100"
        );
        let r2 = adm.reserve(&store, &a.id, Usd(40), 0).await.unwrap();
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
        assert!(adm.reserve(&store, &a.id, Usd(100), 0).await.is_ok());
    }
}
