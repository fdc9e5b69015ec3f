//! Webhooks (SPEC section 8): endpoints an operator registers, and the events spotd
//! sends them, signed the Standard Webhooks way.
//!
//! The outbox is durable: an event is written as one delivery row per subscribed
//! endpoint inside the very transaction that makes the change it reports, so it commits
//! (and survives kill -9) or rolls back with it. Rental and account changes reach it
//! through the store's [`WriteObserver`] hook ([`Outbox`], installed by the daemon),
//! which sees every rental and account write with the record it replaces, whichever
//! code path wrote it; `deployment.ready` and `account.spend_limit` are recorded by
//! their callers ([`events`]). A delivery worker ([`deliver`]) sends what is due, at
//! most [`deliver::MAX_IN_FLIGHT`] at once, on its own tasks, so a slow or dead
//! receiver never holds the API or another worker; it sleeps on the clock until the
//! next attempt is due and is woken when a commit makes one due.
//!
//! Here: the event types, the settings, the observer and the admin operations
//! (`admin`). Signing is in `sign`; the rows and indexes in `store::webhooks`.

pub(crate) mod admin;
pub(crate) mod deliver;
pub(crate) mod events;
pub mod sign;
#[cfg(test)]
mod tests;

use crate::clock::{Clock, Signal};
use crate::model::{Account, Rental, RentalState};
use crate::money::Usd;
use crate::store::{StoreError, Tx, WriteObserver};

/// The event types of SPEC section 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    RentalRunning,
    RentalEnded,
    DeploymentReady,
    LowBalance,
    SpendLimit,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::RentalRunning,
        EventType::RentalEnded,
        EventType::DeploymentReady,
        EventType::LowBalance,
        EventType::SpendLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RentalRunning => "rental.running",
            EventType::RentalEnded => "rental.ended",
            EventType::DeploymentReady => "deployment.ready",
            EventType::LowBalance => "account.low_balance",
            EventType::SpendLimit => "account.spend_limit",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The store's observer: turns rental and account writes into events, inside their
/// transaction, and wakes the delivery worker after a commit made a delivery due.
pub(crate) struct Outbox {
    pub clock: Clock,
    pub low_balance: Usd,
    pub wake: Signal,
}

impl WriteObserver for Outbox {
    fn rental_written(
        &self,
        tx: &Tx<'_>,
        old: Option<&Rental>,
        r: &Rental,
    ) -> Result<(), StoreError> {
        let was = old.map(|o| o.state);
        if was == Some(r.state) {
            return Ok(());
        }
        let kind = if r.state == RentalState::Running {
            EventType::RentalRunning
        } else if r.state.is_terminal() {
            EventType::RentalEnded
        } else {
            return Ok(());
        };
        events::emit(
            tx,
            kind,
            &r.id,
            crate::api::views::rental(r),
            self.clock.now(),
        )
    }

    fn account_written(
        &self,
        tx: &Tx<'_>,
        old: Option<&Account>,
        a: &Account,
    ) -> Result<(), StoreError> {
        // A crossing, not a level: a new account that starts below the line has not
        // fallen, and one already below stays quiet until it has been above again.
        let Some(old) = old else { return Ok(()) };
        if old.available() >= self.low_balance && a.available() < self.low_balance {
            let now = self.clock.now();
            events::emit(
                tx,
                EventType::LowBalance,
                &a.id,
                crate::api::views::account(a, now),
                now,
            )?;
        }
        Ok(())
    }

    fn committed(&self) {
        self.wake.notify();
    }
}
