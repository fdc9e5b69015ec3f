//! Writes: [`Tx`], the write transaction a [`super::Store::write`] closure gets. Every
//! write marks the transaction, so the writer can roll back an operation that failed
//! after writing; a rental's write keeps its account and active indexes in step.

use std::cell::Cell;

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;

use super::codec::{self, Record};
use super::tables::*;
use super::{StoreError, WriteObserver};
use crate::model::{Account, ApiKey, IdempotencyRecord, LedgerEntry, Offer, Rental};

/// A write transaction handed to a [`super::Store::write`] closure.
pub struct Tx<'a> {
    pub(super) txn: &'a WriteTransaction,
    /// Set by every write, so a failing operation that wrote can be rolled back.
    pub(super) wrote: Cell<bool>,
    /// Told about rental and account writes, inside this transaction (the outbox).
    pub(super) observer: Option<&'a dyn WriteObserver>,
    /// Set when a delivery became due: the observer hears of it after the commit.
    pub(super) outbox: Cell<bool>,
    /// Accounts written, for the in-memory balances once the commit is made.
    pub(super) accounts: std::cell::RefCell<Vec<(String, super::Balance)>>,
}

fn put(
    txn: &WriteTransaction,
    def: redb::TableDefinition<&'static str, &'static [u8]>,
    key: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    txn.open_table(def)?.insert(key, bytes)?;
    Ok(())
}

/// The totals key of a rental state.
pub(super) fn state_key(s: crate::model::RentalState) -> String {
    format!("rentals:{}", s.as_str())
}

/// What an entry adds to the totals: credits as they are, charges as money charged.
pub(super) fn ledger_total(e: &LedgerEntry) -> Option<(&'static str, i64)> {
    match e.kind {
        crate::model::LedgerKind::Credit => Some(("credits", e.amount.0)),
        crate::model::LedgerKind::Charge => Some(("charges", -e.amount.0)),
        crate::model::LedgerKind::Hold | crate::model::LedgerKind::Release => None,
    }
}

fn bump(t: &mut redb::Table<&'static str, i64>, key: &str, by: i64) -> Result<(), StoreError> {
    let now = t.get(key)?.map(|v| v.value()).unwrap_or(0);
    // Callers keep totals in range (ledger::append checks the credit total); should one
    // still overflow, the write fails rather than panicking or wrapping.
    let next = now
        .checked_add(by)
        .ok_or_else(|| StoreError::Codec(format!("running total {key} out of range")))?;
    t.insert(key, next)?;
    Ok(())
}

impl Tx<'_> {
    fn mark(&self) {
        self.wrote.set(true);
    }

    pub(crate) fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StoreError> {
        self.mark();
        put(self.txn, META, key, &codec::encode(v)?)
    }
    pub fn put_account(&self, a: &Account) -> Result<(), StoreError> {
        self.mark();
        self.accounts
            .borrow_mut()
            .push((a.id.clone(), super::Balance::of(a)));
        let bytes = a.to_bytes()?;
        let Some(obs) = self.observer else {
            return put(self.txn, ACCOUNTS, &a.id, &bytes);
        };
        let old = self.account(&a.id)?;
        put(self.txn, ACCOUNTS, &a.id, &bytes)?;
        obs.account_written(self, old.as_ref(), a)
    }
    pub(crate) fn put_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.mark();
        put(self.txn, API_KEYS, &k.hash, &k.to_bytes()?)?;
        self.txn
            .open_table(API_KEY_IDS)?
            .insert(k.id.as_str(), k.hash.as_str())?;
        Ok(())
    }
    /// Replaces every offer of `provider` with `offers`.
    pub(crate) fn replace_offers(
        &self,
        provider: &str,
        offers: &[Offer],
    ) -> Result<(), StoreError> {
        self.mark();
        let mut t = self.txn.open_table(OFFERS)?;
        let prefix = format!("{provider}:");
        let stale: Vec<String> = {
            let mut v = Vec::new();
            for item in t.range(prefix.as_str()..)? {
                let (k, _) = item?;
                let k = k.value();
                if !k.starts_with(&prefix) {
                    break;
                }
                v.push(k.to_string());
            }
            v
        };
        for k in stale {
            t.remove(k.as_str())?;
        }
        for o in offers {
            let bytes = o.to_bytes()?;
            t.insert(o.id.as_str(), bytes.as_slice())?;
        }
        Ok(())
    }
    /// Writes a rental and keeps the account and active indexes and the per-state
    /// totals in step with it.
    pub fn put_rental(&self, r: &Rental) -> Result<(), StoreError> {
        self.mark();
        let bytes = r.to_bytes()?;
        let old = self
            .txn
            .open_table(RENTALS)?
            .insert(r.id.as_str(), bytes.as_slice())?
            .map(|v| Rental::from_bytes(v.value()))
            .transpose()?;
        if old.as_ref().map(|o| o.state) != Some(r.state) {
            let mut totals = self.txn.open_table(TOTALS)?;
            if let Some(o) = &old {
                bump(&mut totals, &state_key(o.state), -1)?;
            }
            bump(&mut totals, &state_key(r.state), 1)?;
        }
        self.txn
            .open_table(RENTALS_BY_TIME)?
            .insert((r.created_at, r.id.as_str()), ())?;
        self.txn
            .open_table(ACCOUNT_RENTALS)?
            .insert((r.account_id.as_str(), r.created_at, r.id.as_str()), ())?;
        let mut active = self.txn.open_table(ACTIVE_RENTALS)?;
        let mut by_account = self.txn.open_table(ACCOUNT_ACTIVE)?;
        let key = (r.account_id.as_str(), r.id.as_str());
        if r.state.is_terminal() {
            active.remove(r.id.as_str())?;
            by_account.remove(key)?;
        } else {
            active.insert(r.id.as_str(), ())?;
            by_account.insert(key, ())?;
        }
        drop((active, by_account));
        match self.observer {
            Some(obs) => obs.rental_written(self, old.as_ref(), r),
            None => Ok(()),
        }
    }
    /// Moves a running total by `by` on its own, out of step with what it counts: only
    /// the simulator's injected defect does this.
    pub(crate) fn skew_total(&self, key: &str, by: i64) -> Result<(), StoreError> {
        self.mark();
        bump(&mut self.txn.open_table(TOTALS)?, key, by)
    }
    /// Writes a ledger entry and keeps the credit and charge totals in step (an entry
    /// written again replaces what the old one counted).
    pub(crate) fn put_ledger(&self, e: &LedgerEntry) -> Result<(), StoreError> {
        self.mark();
        let bytes = e.to_bytes()?;
        let old = self
            .txn
            .open_table(LEDGER)?
            .insert((e.account_id.as_str(), e.seq), bytes.as_slice())?
            .map(|v| LedgerEntry::from_bytes(v.value()))
            .transpose()?;
        let mut totals = self.txn.open_table(TOTALS)?;
        if let Some((k, d)) = old.as_ref().and_then(ledger_total) {
            bump(&mut totals, k, -d)?;
        }
        if let Some((k, d)) = ledger_total(e) {
            bump(&mut totals, k, d)?;
        }
        Ok(())
    }
    /// Removes one ledger entry, keeping the totals in step (the retention fold, which
    /// writes the entry that replaces it in the same transaction).
    pub(crate) fn remove_ledger(&self, account: &str, seq: u64) -> Result<(), StoreError> {
        self.mark();
        let old = self
            .txn
            .open_table(LEDGER)?
            .remove((account, seq))?
            .map(|v| LedgerEntry::from_bytes(v.value()))
            .transpose()?;
        if let Some((k, d)) = old.as_ref().and_then(ledger_total) {
            bump(&mut self.txn.open_table(TOTALS)?, k, -d)?;
        }
        Ok(())
    }
    pub(crate) fn put_idempotency(
        &self,
        scope: &str,
        key: &str,
        rec: &IdempotencyRecord,
    ) -> Result<(), StoreError> {
        self.mark();
        let bytes = rec.to_bytes()?;
        self.txn
            .open_table(IDEMPOTENCY)?
            .insert((scope, key), bytes.as_slice())?;
        Ok(())
    }
    /// Sweeps what only matters for 24 h: idempotency records written before `cutoff`
    /// and the credit markers (`credit:...` meta keys) of credits made before it. Reads
    /// at most `limit` rows of each table per call, from the cursors `from` (where the
    /// previous call stopped), so a sweep is one pass in bounded batches however much
    /// there is. Answers what it removed and where to go on (`None`: done).
    pub(crate) fn sweep_expired(
        &self,
        cutoff: crate::clock::Millis,
        limit: usize,
        from: &SweepCursor,
    ) -> Result<(usize, usize, SweepCursor), StoreError> {
        self.mark();
        let mut next = SweepCursor::default();
        let mut idem = self.txn.open_table(IDEMPOTENCY)?;
        let mut old = Vec::new();
        if let Some((scope, key)) = &from.idempotency {
            let mut seen = 0;
            for item in idem.range((scope.as_str(), key.as_str())..)? {
                let (k, v) = item?;
                let (scope, key) = k.value();
                seen += 1;
                if seen > limit {
                    next.idempotency = Some((scope.to_string(), key.to_string()));
                    break;
                }
                let rec = IdempotencyRecord::from_bytes(v.value())?;
                if rec.created_at < cutoff {
                    old.push((scope.to_string(), key.to_string()));
                }
            }
        }
        for (scope, key) in &old {
            idem.remove((scope.as_str(), key.as_str()))?;
        }
        let ledger = self.txn.open_table(LEDGER)?;
        let mut meta = self.txn.open_table(META)?;
        let mut markers = Vec::new();
        if let Some(start) = &from.markers {
            let mut seen = 0;
            for item in meta.range(start.as_str().."credit;")? {
                let (k, v) = item?;
                let name = k.value().to_string();
                seen += 1;
                if seen > limit {
                    next.markers = Some(name);
                    break;
                }
                let Some(account) = name
                    .strip_prefix("credit:")
                    .and_then(|r| r.split(':').next())
                else {
                    continue;
                };
                let seq: u64 = codec::decode(v.value())?;
                let at = match ledger.get((account, seq))? {
                    Some(e) => LedgerEntry::from_bytes(e.value())?.at,
                    None => crate::clock::Millis::MIN,
                };
                if at < cutoff {
                    markers.push(name);
                }
            }
        }
        for m in &markers {
            meta.remove(m.as_str())?;
        }
        Ok((old.len(), markers.len(), next))
    }
}

/// Where a retention sweep goes on: the next idempotency key and credit marker to read
/// (`None`: that table is done). [`SweepCursor::start`] reads both from the beginning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepCursor {
    pub(crate) idempotency: Option<(String, String)>,
    pub(crate) markers: Option<String>,
}

impl SweepCursor {
    pub(crate) fn start() -> SweepCursor {
        SweepCursor {
            idempotency: Some((String::new(), String::new())),
            markers: Some("credit:".to_string()),
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.idempotency.is_none() && self.markers.is_none()
    }
}
