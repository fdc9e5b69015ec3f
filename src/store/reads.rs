//! Reads: every query of the stored records, on a read snapshot ([`Rx`]) and, the
//! same functions, inside a write transaction ([`Tx`]) so an operation can check
//! before it writes.

use redb::{ReadTransaction, ReadableTable};
use serde::de::DeserializeOwned;

use super::codec::{self, Record};
use super::tables::*;
use super::{StoreError, Tx};
use crate::model::{Account, ApiKey, IdempotencyRecord, LedgerEntry, Offer, Rental};

/// A read snapshot handed to a [`super::Store::read`] closure.
pub struct Rx {
    pub(super) txn: ReadTransaction,
}

pub(super) fn get_rec<T: Record>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match t.get(key)? {
        Some(v) => Ok(Some(T::from_bytes(v.value())?)),
        None => Ok(None),
    }
}

fn all_recs<T: Record>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (_, v) = item?;
        out.push(T::from_bytes(v.value())?);
    }
    Ok(out)
}

fn ledger_page(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    account: &str,
    before_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let end = before_seq.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for item in t.range((account, 0u64)..(account, end))?.rev() {
        let (_, v) = item?;
        out.push(LedgerEntry::from_bytes(v.value())?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

fn account_rental_ids(
    t: &impl ReadableTable<(&'static str, i64, &'static str), ()>,
    account: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for item in t.range((account, i64::MIN, "")..=(account, i64::MAX, "\u{10FFFF}"))? {
        let (k, _) = item?;
        out.push(k.value().2.to_string());
    }
    Ok(out)
}

/// Reads shared by read snapshots and write transactions.
macro_rules! reads {
    ($ty:ty) => {
        // Every read exists on both; not every one is used on both.
        #[allow(dead_code)]
        impl $ty {
            pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
                match self.txn.open_table(META)?.get(key)? {
                    Some(v) => Ok(Some(codec::decode(v.value())?)),
                    None => Ok(None),
                }
            }
            pub fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
                get_rec(&self.txn.open_table(ACCOUNTS)?, id)
            }
            pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
                all_recs(&self.txn.open_table(ACCOUNTS)?)
            }
            pub(crate) fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
                get_rec(&self.txn.open_table(API_KEYS)?, hash)
            }
            pub(crate) fn api_key_by_id(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
                let hash = match self.txn.open_table(API_KEY_IDS)?.get(id)? {
                    Some(h) => h.value().to_string(),
                    None => return Ok(None),
                };
                self.api_key_by_hash(&hash)
            }
            pub fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
                all_recs(&self.txn.open_table(API_KEYS)?)
            }
            pub fn offers(&self) -> Result<Vec<Offer>, StoreError> {
                all_recs(&self.txn.open_table(OFFERS)?)
            }
            pub fn offer(&self, id: &str) -> Result<Option<Offer>, StoreError> {
                get_rec(&self.txn.open_table(OFFERS)?, id)
            }
            pub fn rental(&self, id: &str) -> Result<Option<Rental>, StoreError> {
                get_rec(&self.txn.open_table(RENTALS)?, id)
            }
            pub fn rentals(&self) -> Result<Vec<Rental>, StoreError> {
                all_recs(&self.txn.open_table(RENTALS)?)
            }
            /// An account's rentals, oldest first.
            pub(crate) fn account_rentals(&self, account: &str) -> Result<Vec<Rental>, StoreError> {
                let ids = account_rental_ids(&self.txn.open_table(ACCOUNT_RENTALS)?, account)?;
                let t = self.txn.open_table(RENTALS)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(r) = get_rec(&t, &id)? {
                        out.push(r);
                    }
                }
                Ok(out)
            }
            /// One page of an account's rentals, newest first: those strictly before
            /// `before` (a `(created_at, id)` cursor) that `keep` accepts, at most
            /// `limit`. O(page) without a filter; a filter reads on until the page is
            /// full or the account's history ends.
            pub(crate) fn account_rentals_page(
                &self,
                account: &str,
                before: Option<(i64, &str)>,
                limit: usize,
                keep: impl Fn(&Rental) -> bool,
            ) -> Result<Vec<Rental>, StoreError> {
                let idx = self.txn.open_table(ACCOUNT_RENTALS)?;
                let t = self.txn.open_table(RENTALS)?;
                let lo = (account, i64::MIN, "");
                let mut out = Vec::new();
                let push = |id: &str, out: &mut Vec<Rental>| -> Result<bool, StoreError> {
                    if let Some(r) = get_rec::<Rental>(&t, id)? {
                        if keep(&r) {
                            out.push(r);
                        }
                    }
                    Ok(out.len() >= limit)
                };
                match before {
                    Some((at, id)) => {
                        for item in idx.range(lo..(account, at, id))?.rev() {
                            let (k, _) = item?;
                            if push(k.value().2, &mut out)? {
                                break;
                            }
                        }
                    }
                    None => {
                        for item in idx.range(lo..=(account, i64::MAX, "\u{10FFFF}"))?.rev() {
                            let (k, _) = item?;
                            if push(k.value().2, &mut out)? {
                                break;
                            }
                        }
                    }
                }
                Ok(out)
            }
            /// One page of every account's rentals, newest first, as
            /// [`Self::account_rentals_page`] does for one account.
            pub(crate) fn rentals_page(
                &self,
                before: Option<(i64, &str)>,
                limit: usize,
                keep: impl Fn(&Rental) -> bool,
            ) -> Result<Vec<Rental>, StoreError> {
                let idx = self.txn.open_table(RENTALS_BY_TIME)?;
                let t = self.txn.open_table(RENTALS)?;
                let mut out = Vec::new();
                let range = match before {
                    Some(b) => idx.range(..b)?,
                    None => idx.range::<(i64, &str)>(..)?,
                };
                for item in range.rev() {
                    let (k, _) = item?;
                    if let Some(r) = get_rec::<Rental>(&t, k.value().1)? {
                        if keep(&r) {
                            out.push(r);
                            if out.len() >= limit {
                                break;
                            }
                        }
                    }
                }
                Ok(out)
            }
            /// An account's rentals not yet terminal (its live-rental index).
            pub(crate) fn account_live_rentals(
                &self,
                account: &str,
            ) -> Result<Vec<Rental>, StoreError> {
                let idx = self.txn.open_table(ACCOUNT_ACTIVE)?;
                let t = self.txn.open_table(RENTALS)?;
                let mut out = Vec::new();
                for item in idx.range((account, "")..)? {
                    let (k, _) = item?;
                    if k.value().0 != account {
                        break;
                    }
                    if let Some(r) = get_rec(&t, k.value().1)? {
                        out.push(r);
                    }
                }
                Ok(out)
            }
            /// Rentals not in a terminal state.
            pub(crate) fn active_rentals(&self) -> Result<Vec<Rental>, StoreError> {
                let idx = self.txn.open_table(ACTIVE_RENTALS)?;
                let t = self.txn.open_table(RENTALS)?;
                let mut out = Vec::new();
                for item in idx.iter()? {
                    let (k, _) = item?;
                    if let Some(r) = get_rec(&t, k.value())? {
                        out.push(r);
                    }
                }
                Ok(out)
            }
            /// The running totals (see `tables::TOTALS`): (key, value) pairs.
            pub(crate) fn totals(&self) -> Result<Vec<(String, i64)>, StoreError> {
                let t = self.txn.open_table(TOTALS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (k, v) = item?;
                    out.push((k.value().to_string(), v.value()));
                }
                Ok(out)
            }
            /// How many of the account's rentals are not yet terminal (an index range:
            /// O(that account's live rentals)).
            pub(crate) fn count_active(&self, account: &str) -> Result<u64, StoreError> {
                let t = self.txn.open_table(ACCOUNT_ACTIVE)?;
                let mut n = 0;
                for item in t.range((account, "")..)? {
                    let (k, _) = item?;
                    if k.value().0 != account {
                        break;
                    }
                    n += 1;
                }
                Ok(n)
            }
            /// Ledger entries newest first, strictly before `before_seq` when given.
            pub fn ledger(
                &self,
                account: &str,
                before_seq: Option<u64>,
                limit: usize,
            ) -> Result<Vec<LedgerEntry>, StoreError> {
                ledger_page(&self.txn.open_table(LEDGER)?, account, before_seq, limit)
            }
            /// Ledger entries oldest first, strictly after `after_seq` (an auditor's
            /// way to read only what is new).
            pub fn ledger_after(
                &self,
                account: &str,
                after_seq: u64,
                limit: usize,
            ) -> Result<Vec<LedgerEntry>, StoreError> {
                let t = self.txn.open_table(LEDGER)?;
                let mut out = Vec::new();
                let from = after_seq.saturating_add(1);
                for item in t.range((account, from)..=(account, u64::MAX))? {
                    let (_, v) = item?;
                    out.push(LedgerEntry::from_bytes(v.value())?);
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(out)
            }
            pub(crate) fn idempotency(
                &self,
                scope: &str,
                key: &str,
            ) -> Result<Option<IdempotencyRecord>, StoreError> {
                match self.txn.open_table(IDEMPOTENCY)?.get((scope, key))? {
                    Some(v) => Ok(Some(IdempotencyRecord::from_bytes(v.value())?)),
                    None => Ok(None),
                }
            }
        }
    };
}
reads!(Tx<'_>);
reads!(Rx);
