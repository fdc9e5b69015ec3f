//! Accounts and API keys: create, credit, issue and revoke keys, authenticate.
//!
//! Keys are stored only as SHA-256 hashes (ring). A revoked key fails the very next
//! request: authentication reads the key record on every call.

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids;
use crate::ledger;
use crate::model::{Account, ApiKey, LedgerEntry};
use crate::money::Usd;
use crate::store::{Store, Tx};

/// A newly issued key: the secret is shown once and never again.
#[derive(Clone, Debug)]
pub(crate) struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

fn issue_key(tx: &Tx<'_>, account_id: &str, now: i64) -> Result<IssuedKey> {
    issue_key_with_id(tx, account_id, ids::new_id("key"), now)
}

fn issue_key_with_id(tx: &Tx<'_>, account_id: &str, id: String, now: i64) -> Result<IssuedKey> {
    let secret = ids::new_api_key();
    let key = ApiKey {
        id,
        account_id: account_id.to_string(),
        hash: ids::hash_secret(&secret),
        prefix: secret.chars().take(13).collect(),
        created_at: now,
        revoked_at: None,
    };
    tx.put_api_key(&key)?;
    Ok(IssuedKey { key, secret })
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let n = name.trim();
    // Characters, not bytes: "東京チーム" is 5 of them.
    if n.is_empty() || n.chars().count() > 100 {
        return Err(Error::invalid_param(
            "name",
            "name must be 1 to 100 characters",
        ));
    }
    if n.chars().any(|c| c.is_control()) {
        return Err(Error::invalid_param(
            "name",
            "name must not contain control characters",
        ));
    }
    Ok(())
}

/// Creates an account with an optional opening credit and its first key.
pub(crate) async fn create_account(
    store: &Store,
    clock: &Clock,
    name: &str,
    credit: Usd,
) -> Result<(Account, IssuedKey)> {
    create_account_with_id(store, clock, name, credit, None).await
}

/// Like [`create_account`] with a chosen id (from an Idempotency-Key): when that account
/// exists already (the first answer was lost), it gets a new key instead of a twin.
pub(crate) async fn create_account_with_id(
    store: &Store,
    clock: &Clock,
    name: &str,
    credit: Usd,
    id: Option<String>,
) -> Result<(Account, IssuedKey)> {
    validate_name(name)?;
    if credit.is_negative() {
        return Err(Error::invalid_param(
            "credit",
            "credit must not be negative",
        ));
    }
    let name = name.trim().to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            let now = clock.now();
            if let Some(existing) = id.as_deref().map(|i| tx.account(i)).transpose()?.flatten() {
                let k = issue_key(tx, &existing.id, now)?;
                return Ok((existing, k));
            }
            let mut a = Account::new(id.unwrap_or_else(|| ids::new_id("acct")), name, now);
            if credit > Usd::ZERO {
                ledger::credit(tx, &mut a, credit, Some("opening credit".into()), now)?;
            }
            tx.put_account(&a)?;
            let k = issue_key(tx, &a.id, now)?;
            Ok((a, k))
        })
        .await
}

/// Adds (or with a negative amount, removes) credit.
pub async fn add_credit(
    store: &Store,
    clock: &Clock,
    account_id: &str,
    amount: Usd,
    note: Option<String>,
) -> Result<(Account, LedgerEntry)> {
    add_credit_once(store, clock, account_id, amount, note, None).await
}

/// Like [`add_credit`]; with `once` (derived from an Idempotency-Key) the credit is
/// recorded under that marker in the same transaction, so a retry after a lost answer
/// returns the first entry instead of crediting twice.
pub(crate) async fn add_credit_once(
    store: &Store,
    clock: &Clock,
    account_id: &str,
    amount: Usd,
    note: Option<String>,
    once: Option<String>,
) -> Result<(Account, LedgerEntry)> {
    let id = account_id.to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            let mut a = tx
                .account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))?;
            let marker = once.map(|o| format!("credit:{id}:{o}"));
            if let Some(m) = &marker {
                if let Some(seq) = tx.meta::<u64>(m)? {
                    let e = tx
                        .ledger(&id, Some(seq + 1), 1)?
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::Bug(format!("credit marker {m} names no entry")))?;
                    return Ok((a, e));
                }
            }
            let e = ledger::credit(tx, &mut a, amount, note, clock.now())?;
            tx.put_account(&a)?;
            if let Some(m) = &marker {
                tx.put_meta(m, &e.seq)?;
            }
            Ok((a, e))
        })
        .await
}

/// A change to an account's spend guards (SPEC section 6): for each cap, `None` leaves
/// it as it is, `Some(None)` clears it, `Some(Some(usd))` sets it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LimitsPatch {
    pub max_usd_per_hour: Option<Option<Usd>>,
    pub max_usd_per_month: Option<Option<Usd>>,
}

/// Sets or clears the account's caps. A cap may be set below what is live or already
/// spent: nothing running is ended for it at once; new rents are refused, and the
/// monthly one stops billing at the next metering step.
pub(crate) async fn set_limits(store: &Store, id: &str, patch: LimitsPatch) -> Result<Account> {
    for (param, v) in [
        ("max_usd_per_hour", patch.max_usd_per_hour),
        ("max_usd_per_month", patch.max_usd_per_month),
    ] {
        if let Some(Some(u)) = v {
            if u.is_negative() {
                return Err(Error::invalid_param(
                    param,
                    format!("{param} must not be negative (null clears it)"),
                ));
            }
        }
    }
    let id = id.to_string();
    store
        .write(move |tx| {
            let mut a = tx
                .account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))?;
            if let Some(v) = patch.max_usd_per_hour {
                a.max_usd_per_hour = v;
            }
            if let Some(v) = patch.max_usd_per_month {
                a.max_usd_per_month = v;
            }
            tx.put_account(&a)?;
            Ok(a)
        })
        .await
}

pub(crate) async fn create_key(
    store: &Store,
    clock: &Clock,
    account_id: &str,
) -> Result<IssuedKey> {
    match create_key_with_id(store, clock, account_id, None).await? {
        (key, Some(secret)) => Ok(IssuedKey { key, secret }),
        (_, None) => Err(Error::Bug("a new key without its secret".into())),
    }
}

/// Issues a key for the account; with `key_id` (derived from an Idempotency-Key) a key
/// that already has that id is returned instead, without its secret: the secret is
/// shown once and never stored, so a retry after a crash cannot show it again.
pub(crate) async fn create_key_with_id(
    store: &Store,
    clock: &Clock,
    account_id: &str,
    key_id: Option<String>,
) -> Result<(ApiKey, Option<String>)> {
    let id = account_id.to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            tx.account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))?;
            if let Some(kid) = &key_id {
                if let Some(k) = tx.api_key_by_id(kid)? {
                    if k.account_id == id {
                        return Ok((k, None));
                    }
                }
            }
            let kid = key_id.unwrap_or_else(|| ids::new_id("key"));
            let k = issue_key_with_id(tx, &id, kid, clock.now())?;
            Ok((k.key, Some(k.secret)))
        })
        .await
}

pub(crate) async fn revoke_key(store: &Store, clock: &Clock, key_id: &str) -> Result<ApiKey> {
    let id = key_id.to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            let mut k = tx
                .api_key_by_id(&id)?
                .ok_or_else(|| Error::NotFound(format!("no key with id '{id}'")))?;
            if k.revoked_at.is_none() {
                k.revoked_at = Some(clock.now());
                tx.put_api_key(&k)?;
            }
            Ok(k)
        })
        .await
}

/// Who a bearer secret is: its account and key ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub account_id: String,
    pub key_id: String,
}

/// Most keys the authentication cache holds; past it the cache starts over (each
/// entry is a hash and two ids, about 150 bytes: at most ~15 MB).
const KEY_CACHE_MAX: usize = 100_000;

/// Live API keys by hash, so authenticating a request is a hash and a map lookup, not a
/// store read on the blocking pool. Only keys that were valid when read are cached, and
/// [`KeyCache::forget`] drops a key as it is revoked (this daemon is the only writer of
/// its database), so a revoked key fails the very next request as before.
#[derive(Default)]
pub struct KeyCache {
    keys: std::sync::RwLock<std::collections::HashMap<String, Principal>>,
    /// Bumped by every `forget`: a store read that began before a revocation must not
    /// put the key back afterwards.
    forgets: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// The principal of `secret`, from memory or else from the store.
    pub(crate) async fn authenticate(&self, store: &Store, secret: &str) -> Result<Principal> {
        let hash = ids::hash_secret(secret);
        if let Some(p) = self.keys.read().ok().and_then(|m| m.get(&hash).cloned()) {
            return Ok(p);
        }
        let before = self.forgets.load(std::sync::atomic::Ordering::SeqCst);
        let (a, k) = authenticate(store, secret).await?;
        let p = Principal {
            account_id: a.id,
            key_id: k.id,
        };
        if let Ok(mut m) = self.keys.write() {
            if self.forgets.load(std::sync::atomic::Ordering::SeqCst) != before {
                return Ok(p);
            }
            if m.len() >= KEY_CACHE_MAX {
                m.clear();
            }
            m.insert(hash, p.clone());
        }
        Ok(p)
    }

    /// Drops a key (by its hash) from the cache; called once its revocation is durable.
    pub(crate) fn forget(&self, hash: &str) {
        if let Ok(mut m) = self.keys.write() {
            self.forgets
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            m.remove(hash);
        }
    }
}

/// The account a bearer secret belongs to, or `Unauthenticated`.
pub(crate) async fn authenticate(store: &Store, secret: &str) -> Result<(Account, ApiKey)> {
    let hash = ids::hash_secret(secret);
    store
        .read(move |rx| {
            let k = rx
                .api_key_by_hash(&hash)?
                .ok_or_else(|| Error::Unauthenticated("invalid API key".into()))?;
            if k.revoked_at.is_some() {
                return Err(Error::Unauthenticated(
                    "this API key has been revoked".into(),
                ));
            }
            let a = rx
                .account(&k.account_id)?
                .ok_or_else(|| Error::Unauthenticated("invalid API key".into()))?;
            Ok((a, k))
        })
        .await
}

pub(crate) async fn get_account(store: &Store, id: &str) -> Result<Account> {
    let id = id.to_string();
    store
        .read(move |rx| {
            rx.account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retried_credit_or_account_create_happens_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.redb")).unwrap();
        let clock = Clock::manual(1_000);
        let id = Some("acct_fixed0000000001".to_string());
        let (a1, k1) = create_account_with_id(&store, &clock, "t", Usd(5_000_000), id.clone())
            .await
            .unwrap();
        // The answer was lost; the retry finds the account and issues another key.
        let (a2, k2) = create_account_with_id(&store, &clock, "t", Usd(5_000_000), id)
            .await
            .unwrap();
        assert_eq!(a1.id, a2.id);
        assert_eq!(a2.balance, Usd(5_000_000), "credited once");
        assert_ne!(k1.secret, k2.secret);
        let once = Some("0123456789abcdef".to_string());
        let (_, e1) = add_credit_once(&store, &clock, &a1.id, Usd(2_500_000), None, once.clone())
            .await
            .unwrap();
        let (a, e2) = add_credit_once(&store, &clock, &a1.id, Usd(2_500_000), None, once)
            .await
            .unwrap();
        assert_eq!(e1, e2, "the retry answers the first entry");
        assert_eq!(a.balance, Usd(7_500_000));
        let entries = store
            .read(move |rx| rx.ledger(&a.id, None, 100))
            .await
            .unwrap();
        assert_eq!(entries.len(), 2, "opening credit + one top-up");
    }
}
