//! Committed balances in memory: every account written by a committed transaction,
//! as the writer applied it (after the commit, before its callers are answered), so
//! the hosted hot path reads an account's available credit without a store read on
//! the blocking pool. An account not written since start-up is read from the store
//! once and remembered; a remembered figure never overwrites a newer one (each
//! account write carries its ledger sequence, which only grows). Bound: one entry per
//! account (~130 bytes each), the accounts table's size.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::model::Account;
use crate::money::Usd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub balance: Usd,
    pub held: Usd,
    pub seq: u64,
    /// The monthly spend guard and the month's running figure (SPEC section 6), which
    /// hosted admission checks like the credit.
    pub max_usd_per_month: Option<Usd>,
    pub spend_month: u32,
    pub month_spent: Usd,
}

impl Balance {
    pub fn of(a: &Account) -> Balance {
        Balance {
            balance: a.balance,
            held: a.held,
            seq: a.ledger_seq,
            max_usd_per_month: a.max_usd_per_month,
            spend_month: a.spend_month,
            month_spent: a.month_spent,
        }
    }

    pub fn available(&self) -> Usd {
        self.balance - self.held
    }
}

#[derive(Clone, Default)]
pub(crate) struct Balances {
    map: Arc<RwLock<HashMap<String, Balance>>>,
}

impl Balances {
    pub(crate) fn get(&self, id: &str) -> Option<Balance> {
        self.map.read().ok()?.get(id).copied()
    }

    /// Applies a committed write (in commit order: always the newest).
    pub(crate) fn committed(&self, written: Vec<(String, Balance)>) {
        if written.is_empty() {
            return;
        }
        if let Ok(mut m) = self.map.write() {
            for (id, b) in written {
                m.insert(id, b);
            }
        }
    }

    /// Remembers a figure read from the store, unless a newer one is already there.
    pub(crate) fn remember(&self, id: &str, b: Balance) {
        if let Ok(mut m) = self.map.write() {
            match m.get(id) {
                Some(old) if old.seq >= b.seq => {}
                _ => {
                    m.insert(id.to_string(), b);
                }
            }
        }
    }
}
