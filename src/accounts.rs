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
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

fn issue_key(tx: &Tx<'_>, account_id: &str, now: i64) -> Result<IssuedKey> {
    let secret = ids::new_api_key();
    let key = ApiKey {
        id: ids::new_id("key"),
        account_id: account_id.to_string(),
        hash: ids::hash_secret(&secret),
        prefix: secret.chars().take(13).collect(),
        created_at: now,
        revoked_at: None,
    };
    tx.put_api_key(&key)?;
    Ok(IssuedKey { key, secret })
}

pub fn validate_name(name: &str) -> Result<()> {
    let n = name.trim();
    if n.is_empty() || n.len() > 100 {
        return Err(Error::bad_param("name", "name must be 1 to 100 characters"));
    }
    if n.chars().any(|c| c.is_control()) {
        return Err(Error::bad_param(
            "name",
            "name must not contain control characters",
        ));
    }
    Ok(())
}

/// Creates an account with an optional opening credit and its first key.
pub async fn create_account(
    store: &Store,
    clock: &Clock,
    name: &str,
    credit: Usd,
) -> Result<(Account, IssuedKey)> {
    validate_name(name)?;
    if credit.is_negative() {
        return Err(Error::bad_param("credit", "credit must not be negative"));
    }
    let name = name.trim().to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            let now = clock.now();
            let mut a = Account {
                id: ids::new_id("acct"),
                name,
                created_at: now,
                balance: Usd::ZERO,
                held: Usd::ZERO,
                ledger_seq: 0,
            };
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
    let id = account_id.to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            let mut a = tx
                .account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))?;
            let e = ledger::credit(tx, &mut a, amount, note, clock.now())?;
            tx.put_account(&a)?;
            Ok((a, e))
        })
        .await
}

pub async fn create_key(store: &Store, clock: &Clock, account_id: &str) -> Result<IssuedKey> {
    let id = account_id.to_string();
    let clock = clock.clone();
    store
        .write(move |tx| {
            tx.account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))?;
            issue_key(tx, &id, clock.now())
        })
        .await
}

pub async fn revoke_key(store: &Store, clock: &Clock, key_id: &str) -> Result<ApiKey> {
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

/// The account a bearer secret belongs to, or 401.
pub async fn authenticate(store: &Store, secret: &str) -> Result<(Account, ApiKey)> {
    let hash = ids::hash_secret(secret);
    store
        .read(move |rx| {
            let k = rx
                .api_key_by_hash(&hash)?
                .ok_or_else(|| Error::Unauthorized("invalid API key".into()))?;
            if k.revoked_at.is_some() {
                return Err(Error::Unauthorized("this API key has been revoked".into()));
            }
            let a = rx
                .account(&k.account_id)?
                .ok_or_else(|| Error::Unauthorized("invalid API key".into()))?;
            Ok((a, k))
        })
        .await
}

pub async fn get_account(store: &Store, id: &str) -> Result<Account> {
    let id = id.to_string();
    store
        .read(move |rx| {
            rx.account(&id)?
                .ok_or_else(|| Error::NotFound(format!("no account with id '{id}'")))
        })
        .await
}
