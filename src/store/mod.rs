//! The only code that touches redb.
//!
//! One writer thread owns every write transaction. Callers hand it a closure with
//! [`Store::write`]; the writer runs all closures that are waiting into one transaction
//! and makes them durable with one commit (one fsync), then answers each caller. A
//! closure that returns `Err` must not have written anything (check, then write): its
//! error goes back to its caller and the others in the batch commit normally.
//! Reads run on tokio's blocking pool ([`Store::read`]), never on executor threads.

pub(crate) mod codec;
#[cfg(test)]
mod fixture_tests;
pub(crate) mod tables;

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::model::{Account, ApiKey, IdempotencyRecord, LedgerEntry, Offer, Rental};
use tables::*;

/// What can go wrong in the store. The cause, where there is one, is the `source()`
/// (shared with an `Arc`, so one failed commit can answer every operation in its batch).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb failed: I/O, a damaged file, a transaction it could not begin or commit.
    #[error("storage: {0}")]
    Db(#[source] Arc<redb::Error>),
    /// bincode could not encode a record.
    #[error("record codec: encode: {0}")]
    Encode(#[source] Arc<bincode::error::EncodeError>),
    /// bincode could not decode a record's body as the type asked.
    #[error("record codec: decode: {0}")]
    Decode(#[source] Arc<bincode::error::DecodeError>),
    /// A record's framing is wrong: empty, a version byte without a decoder, bytes left
    /// over after the body.
    #[error("record codec: {0}")]
    Codec(String),
    /// The file was written by a spotd with another schema than this one migrates from.
    #[error("storage: database schema version {found} is not supported by this spotd (expects {expected})")]
    UnsupportedSchema { found: u32, expected: u32 },
    /// The writer thread could not be started.
    #[error("storage: cannot start writer thread: {0}")]
    WriterThread(#[source] Arc<std::io::Error>),
    /// The operation panicked in the writer, so it has no answer.
    #[error("storage: the write was abandoned (an operation panicked)")]
    Abandoned,
    /// The operation was sound, but another one in its batch failed after writing (or
    /// panicked), and the batch's transaction was rolled back with it.
    #[error("storage: rolled back with a failed operation")]
    RolledBack,
    /// A read on the blocking pool panicked or was cancelled.
    #[error("storage: read task failed: {0}")]
    ReadTask(#[source] Arc<tokio::task::JoinError>),
    /// The writer has stopped ([`Store::close`]).
    #[error("the store is closed")]
    Closed,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

/// redb has one error type per operation; each converges on `redb::Error`.
macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(Arc::new(e.into())) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What the writer runs: the operation, returning what to do once the commit is known.
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs one operation; answers its completion and whether it failed after writing.
type Op = Box<dyn FnOnce(&Tx<'_>) -> (Completion, bool) + Send>;

enum Job {
    Run(Op),
    /// Finish what is queued, release the database file, then answer.
    Stop(std::sync::mpsc::Sender<()>),
}

/// Up to this many queued operations share one commit.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job>,
    /// Group commits made so far (one fsync each).
    commits: Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    /// Opens (or creates) the database at `path`, creates missing tables, checks the
    /// schema version and starts the writer thread. Blocking: call it before serving,
    /// or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_repair_callback(path, |_| {})
    }

    /// [`Store::open`], calling `on_repair(progress)` (0.0 to 1.0) periodically while
    /// redb repairs a file left by an unclean stop, which can take long on a big file;
    /// under systemd the daemon extends its start timeout from it.
    pub(crate) fn open_with_repair_callback(
        path: &Path,
        on_repair: impl Fn(f64) + 'static,
    ) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_repair_callback(move |s| on_repair(s.progress()))
            .create(path)?;
        {
            let txn = db.begin_write()?;
            txn.open_table(META)?;
            txn.open_table(ACCOUNTS)?;
            txn.open_table(API_KEYS)?;
            txn.open_table(API_KEY_IDS)?;
            txn.open_table(OFFERS)?;
            txn.open_table(RENTALS)?;
            txn.open_table(ACCOUNT_RENTALS)?;
            txn.open_table(ACTIVE_RENTALS)?;
            txn.open_table(ACCOUNT_ACTIVE)?;
            txn.open_table(LEDGER)?;
            txn.open_table(IDEMPOTENCY)?;
            {
                let mut meta = txn.open_table(META)?;
                let existing = meta
                    .get("schema_version")?
                    .map(|v| codec::decode::<u32>(v.value()))
                    .transpose()?;
                match existing {
                    None => {
                        meta.insert("schema_version", codec::encode(&SCHEMA_VERSION)?.as_slice())?;
                    }
                    Some(v) if v == SCHEMA_VERSION => {}
                    Some(1) => {
                        migrate_1_to_2(&txn)?;
                        meta.insert("schema_version", codec::encode(&SCHEMA_VERSION)?.as_slice())?;
                    }
                    Some(v) => {
                        return Err(StoreError::UnsupportedSchema {
                            found: v,
                            expected: SCHEMA_VERSION,
                        })
                    }
                }
            }
            txn.commit()?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let wdb = db.clone();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wcommits = commits.clone();
        std::thread::Builder::new()
            .name("spotd-store-writer".into())
            .spawn(move || writer_loop(wdb, rx, &wcommits))
            .map_err(|e| StoreError::WriterThread(Arc::new(e)))?;
        Ok(Store {
            db,
            jobs: tx,
            commits,
        })
    }

    /// Runs `f` inside the next group commit and returns its result once durable.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R, E>>();
        let job: Op = Box::new(move |t: &Tx<'_>| {
            t.wrote.set(false);
            let r = f(t);
            let dirty_failure = r.is_err() && t.wrote.get();
            let c = Box::new(move |commit: Result<(), StoreError>| {
                let out = match (r, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(c)) => Err(E::from(c)),
                };
                let _ = tx.send(out);
            }) as Completion;
            (c, dirty_failure)
        });
        self.jobs
            .send(Job::Run(job))
            .map_err(|_| E::from(StoreError::Closed))?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(E::from(StoreError::Abandoned)),
        }
    }

    /// Runs `f` on a read snapshot, on the blocking pool.
    pub async fn read<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Rx) -> Result<R, E> + Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(StoreError::from)?;
            f(&Rx { txn })
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(E::from(StoreError::ReadTask(Arc::new(e)))),
        }
    }

    /// Runs `f` in its own write transaction with its own commit, on the calling
    /// thread, bypassing the group-commit writer. Only for benchmarks that measure
    /// what grouping saves, and for offline tools; the daemon never calls it.
    pub fn write_unbatched<R, E, F>(&self, f: F) -> Result<R, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Tx<'_>) -> Result<R, E>,
    {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let r = {
            let tx = Tx {
                txn: &txn,
                wrote: Cell::new(false),
            };
            f(&tx)
        };
        match r {
            Ok(v) => {
                txn.commit().map_err(StoreError::from)?;
                Ok(v)
            }
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    /// Stops the writer after the writes already queued and releases the file, so the
    /// same database can be opened again in this process (a restart in tests).
    pub(crate) fn close(self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.jobs.send(Job::Stop(tx)).is_ok() {
            drop(self.db);
            let _ = rx.recv();
        }
    }

    /// How many group commits the writer has made (each one fsync): what tests and
    /// benches measure batching by.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A synchronous read, for tests that check what a write left.
    #[cfg(test)]
    pub(crate) fn read_blocking<R, E, F>(&self, f: F) -> Result<R, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Rx) -> Result<R, E>,
    {
        let txn = self.db.begin_read().map_err(StoreError::from)?;
        f(&Rx { txn })
    }
}

/// Schema 1 -> 2: `account_active` from `active_rentals` (one pass over live rentals).
fn migrate_1_to_2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let active = txn.open_table(ACTIVE_RENTALS)?;
    let rentals = txn.open_table(RENTALS)?;
    let mut by_account = txn.open_table(ACCOUNT_ACTIVE)?;
    for item in active.iter()? {
        let (k, _) = item?;
        if let Some(r) = get_rec::<Rental>(&rentals, k.value())? {
            by_account.insert((r.account_id.as_str(), r.id.as_str()), ())?;
        }
    }
    Ok(())
}

fn writer_loop(db: Arc<Database>, rx: mpsc::Receiver<Job>, commits: &std::sync::atomic::AtomicU64) {
    let mut stop: Option<std::sync::mpsc::Sender<()>> = None;
    while let Ok(first) = rx.recv() {
        let mut pending = Vec::new();
        match first {
            Job::Run(op) => pending.push(op),
            Job::Stop(s) => stop = Some(s),
        }
        while stop.is_none() && pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Job::Run(op)) => pending.push(op),
                Ok(Job::Stop(s)) => stop = Some(s),
                Err(_) => break,
            }
        }
        run_batch(&db, pending, commits);
        if stop.is_some() {
            break;
        }
    }
    // Release the file before telling `close` it may be opened again.
    drop(db);
    drop(rx);
    if let Some(s) = stop {
        let _ = s.send(());
    }
}

fn run_batch(db: &Database, pending: Vec<Op>, commits: &std::sync::atomic::AtomicU64) {
    if pending.is_empty() {
        return;
    }
    {
        let mut queue = pending.into_iter();
        // An operation that panics, or returns an error after it wrote, aborts its
        // transaction (its partial writes must not land); the operations before it in
        // the batch answer an error, the ones after it run in a fresh transaction.
        loop {
            let txn = match db.begin_write() {
                Ok(t) => t,
                Err(e) => {
                    let err = StoreError::from(e);
                    for job in queue.by_ref() {
                        // Without a transaction the job cannot run; dropping it answers
                        // its caller with an error.
                        drop(job);
                    }
                    tracing::error!(error = %err, "cannot begin a write transaction");
                    break;
                }
            };
            let mut done: Vec<Completion> = Vec::new();
            let mut panicked = false;
            let tx = Tx {
                txn: &txn,
                wrote: Cell::new(false),
            };
            for job in queue.by_ref() {
                match std::panic::catch_unwind(AssertUnwindSafe(|| job(&tx))) {
                    Ok((c, false)) => done.push(c),
                    Ok((c, true)) => {
                        // Its own caller gets its own error from the completion.
                        tracing::error!(
                            "a store operation failed after writing; its batch is rolled back"
                        );
                        c(Ok(()));
                        panicked = true;
                        break;
                    }
                    Err(_) => {
                        tracing::error!("a store operation panicked; its batch is rolled back");
                        panicked = true;
                        break;
                    }
                }
            }
            if panicked {
                let _ = txn.abort();
                for c in done {
                    c(Err(StoreError::RolledBack));
                }
                continue;
            }
            let res = txn.commit().map_err(StoreError::from);
            commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for c in done {
                c(res.clone());
            }
            break;
        }
    }
}

/// A write transaction handed to a [`Store::write`] closure.
pub struct Tx<'a> {
    txn: &'a WriteTransaction,
    /// Set by every write, so a failing operation that wrote can be rolled back.
    wrote: Cell<bool>,
}

/// A read snapshot handed to a [`Store::read`] closure.
pub struct Rx {
    txn: ReadTransaction,
}

fn get_rec<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match t.get(key)? {
        Some(v) => Ok(Some(codec::decode(v.value())?)),
        None => Ok(None),
    }
}

fn all_recs<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (_, v) = item?;
        out.push(codec::decode(v.value())?);
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
        out.push(codec::decode(v.value())?);
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
                get_rec(&self.txn.open_table(META)?, key)
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
            pub(crate) fn idempotency(
                &self,
                scope: &str,
                key: &str,
            ) -> Result<Option<IdempotencyRecord>, StoreError> {
                match self.txn.open_table(IDEMPOTENCY)?.get((scope, key))? {
                    Some(v) => Ok(Some(codec::decode(v.value())?)),
                    None => Ok(None),
                }
            }
        }
    };
}
reads!(Tx<'_>);
reads!(Rx);

fn put<T: Serialize>(
    txn: &WriteTransaction,
    def: redb::TableDefinition<&'static str, &'static [u8]>,
    key: &str,
    v: &T,
) -> Result<(), StoreError> {
    let bytes = codec::encode(v)?;
    txn.open_table(def)?.insert(key, bytes.as_slice())?;
    Ok(())
}

impl Tx<'_> {
    fn mark(&self) {
        self.wrote.set(true);
    }

    pub(crate) fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StoreError> {
        self.mark();
        put(self.txn, META, key, v)
    }
    pub fn put_account(&self, a: &Account) -> Result<(), StoreError> {
        self.mark();
        put(self.txn, ACCOUNTS, &a.id, a)
    }
    pub(crate) fn put_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.mark();
        put(self.txn, API_KEYS, &k.hash, k)?;
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
            let bytes = codec::encode(o)?;
            t.insert(o.id.as_str(), bytes.as_slice())?;
        }
        Ok(())
    }
    /// Writes a rental and keeps the account and active indexes in step with it.
    pub fn put_rental(&self, r: &Rental) -> Result<(), StoreError> {
        self.mark();
        put(self.txn, RENTALS, &r.id, r)?;
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
        Ok(())
    }
    pub(crate) fn put_ledger(&self, e: &LedgerEntry) -> Result<(), StoreError> {
        self.mark();
        let bytes = codec::encode(e)?;
        self.txn
            .open_table(LEDGER)?
            .insert((e.account_id.as_str(), e.seq), bytes.as_slice())?;
        Ok(())
    }
    pub(crate) fn put_idempotency(
        &self,
        scope: &str,
        key: &str,
        rec: &IdempotencyRecord,
    ) -> Result<(), StoreError> {
        self.mark();
        self.mark();
        let bytes = codec::encode(rec)?;
        self.txn
            .open_table(IDEMPOTENCY)?
            .insert((scope, key), bytes.as_slice())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land_and_errors_stay_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let mut handles = Vec::new();
        for i in 0..64u64 {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                s.write(move |tx| {
                    if i % 8 == 7 {
                        return Err(StoreError::Codec("refused".into()));
                    }
                    tx.put_meta(&format!("k{i}"), &i)?;
                    Ok::<_, StoreError>(i)
                })
                .await
            }));
        }
        let mut ok = 0;
        for h in handles {
            if h.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 56);
        let n = store
            .read(|rx| {
                let mut n = 0;
                for i in 0..64u64 {
                    if let Some(v) = rx.meta::<u64>(&format!("k{i}"))? {
                        assert_eq!(v, i);
                        n += 1;
                    }
                }
                Ok::<_, StoreError>(n)
            })
            .await
            .unwrap();
        assert_eq!(n, 56);
    }

    #[tokio::test]
    async fn a_panicking_operation_writes_nothing_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let bad = store
            .write(|tx| -> Result<(), StoreError> {
                tx.put_meta("partial", &1u32)?;
                panic!("boom")
            })
            .await;
        assert!(bad.is_err());
        store.write(|tx| tx.put_meta("after", &2u32)).await.unwrap();
        let (p, a): (Option<u32>, Option<u32>) = store
            .read(|rx| Ok::<_, StoreError>((rx.meta("partial")?, rx.meta("after")?)))
            .await
            .unwrap();
        assert_eq!(
            p, None,
            "the panicked operation's write must be rolled back"
        );
        assert_eq!(a, Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operation_that_fails_after_writing_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let bad = store
            .write(|tx| -> Result<(), StoreError> {
                tx.put_meta("half", &1u32)?;
                Err(StoreError::Codec("refused after writing".into()))
            })
            .await;
        assert!(bad.is_err());
        store.write(|tx| tx.put_meta("next", &2u32)).await.unwrap();
        let (h, n): (Option<u32>, Option<u32>) = store
            .read(|rx| Ok::<_, StoreError>((rx.meta("half")?, rx.meta("next")?)))
            .await
            .unwrap();
        assert_eq!(h, None, "a failed operation's writes must be rolled back");
        assert_eq!(n, Some(2));
    }

    #[test]
    fn reopen_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.redb");
        {
            let store = Store::open(&p).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(store.write(|tx| tx.put_meta("x", &5u8)))
                .unwrap();
            store.close();
        }
        let store = Store::open(&p).unwrap();
        let v: Option<u8> = store.read_blocking(|rx| rx.meta("x")).unwrap();
        assert_eq!(v, Some(5));
    }

    /// The per-account live-rental index follows every state change, and a schema-1
    /// database (no index) gets it built on open.
    #[test]
    fn count_active_follows_states_and_is_built_for_a_schema_1_database() {
        use crate::model::RentalState;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.redb");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = Store::open(&p).unwrap();
        let mk = |id: &str, acct: &str, state: RentalState| {
            let mut r = crate::ledger::tests::rental(crate::money::Usd(1), crate::money::Usd(0));
            (r.id, r.account_id, r.state) = (id.into(), acct.into(), state);
            r
        };
        let rentals = [
            mk("rnt_a1", "acct_a", RentalState::Running),
            mk("rnt_a2", "acct_a", RentalState::Provisioning),
            mk("rnt_a3", "acct_a", RentalState::Terminated),
            mk("rnt_b1", "acct_b", RentalState::Terminating),
        ];
        rt.block_on(store.write(move |tx| rentals.iter().try_for_each(|r| tx.put_rental(r))))
            .unwrap();
        let counts = |store: &Store| {
            store
                .read_blocking(|rx| {
                    Ok::<_, StoreError>((
                        rx.count_active("acct_a")?,
                        rx.count_active("acct_b")?,
                        rx.count_active("acct_")?,
                    ))
                })
                .unwrap()
        };
        assert_eq!(counts(&store), (2, 1, 0));
        let mut done = mk("rnt_a1", "acct_a", RentalState::Terminated);
        done.created_at = 0;
        rt.block_on(store.write(move |tx| tx.put_rental(&done)))
            .unwrap();
        assert_eq!(counts(&store), (1, 1, 0));
        store.close();

        // Make it a schema-1 database: no index, version 1.
        {
            let db = Database::create(&p).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(ACCOUNT_ACTIVE).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", codec::encode(&1u32).unwrap().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&p).unwrap();
        assert_eq!(counts(&store), (1, 1, 0), "built from active_rentals");
        let v: Option<u32> = store.read_blocking(|rx| rx.meta("schema_version")).unwrap();
        assert_eq!(v, Some(SCHEMA_VERSION));
    }
}
