//! The only code that touches redb.
//!
//! One writer thread (`writer`) owns every write transaction. Callers hand it a
//! closure with [`Store::write`]; the writer runs all closures that are waiting in one
//! transaction and makes them durable with one commit (one fsync), then answers each
//! caller. A closure should check before it writes: one that returns `Err` without
//! writing just gets its error back while the others in the batch commit normally;
//! one that fails after writing, or panics, rolls its transaction back, and the
//! others in it answer [`StoreError::RolledBack`] (see `writer`). Reads run on tokio's
//! blocking pool ([`Store::read`]), never on executor threads; the same queries work
//! inside a write ([`Tx`], `reads`, `writes`).

mod backup;
mod balances;
pub(crate) mod codec;
mod error;
#[cfg(test)]
mod fixture_tests;
mod history;
mod legacy;
mod reads;
pub(crate) mod tables;
#[cfg(test)]
mod tests;
mod webhooks;
mod writer;
mod writes;

use std::cell::Cell;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::model::{Account, Rental};
use codec::Record;
use tables::*;
use writer::{writer_loop, Completion, Job, Op};

pub use backup::{file_schema_version, BackupStats};
pub use balances::Balance;
pub use error::StoreError;
pub(crate) use history::{HistoryKey, HistorySweep};
pub use reads::Rx;
pub(crate) use writes::SweepCursor;
pub use writes::Tx;

/// redb's page cache (its default is 1 GiB: one scrape that read the whole ledger took
/// RSS from 43 to 260 MB). Reads that need more go to the OS page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// What the store tells about the writes it makes, from inside their transaction, so
/// what it writes in turn (the webhooks outbox) commits or rolls back with them. The
/// daemon installs one ([`Store::observe`]); a store without one just writes.
pub(crate) trait WriteObserver: Send + Sync {
    /// `r` was written over `old` (`None`: a new rental).
    fn rental_written(
        &self,
        tx: &Tx<'_>,
        old: Option<&Rental>,
        r: &Rental,
    ) -> Result<(), StoreError>;
    /// `a` was written over `old` (`None`: a new account).
    fn account_written(
        &self,
        tx: &Tx<'_>,
        old: Option<&Account>,
        a: &Account,
    ) -> Result<(), StoreError>;
    /// A commit made a delivery due (`Tx::enqueue_delivery` and friends); called on the
    /// writer thread after the commit, before its callers are answered.
    fn committed(&self);
}

pub(crate) type ObserverSlot = Arc<std::sync::OnceLock<Arc<dyn WriteObserver>>>;

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// Every account as last committed (see `balances`).
    balances: balances::Balances,
    observer: ObserverSlot,
    /// The database file (backups are written beside it).
    path: Arc<std::path::PathBuf>,
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
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked(path.display().to_string())
                }
                other => other.into(),
            })?;
        {
            let txn = db.begin_write()?;
            txn.open_table(META)?;
            txn.open_table(ACCOUNTS)?;
            txn.open_table(API_KEYS)?;
            txn.open_table(API_KEY_IDS)?;
            txn.open_table(OFFERS)?;
            txn.open_table(RENTALS)?;
            txn.open_table(ACCOUNT_RENTALS)?;
            txn.open_table(RENTALS_BY_TIME)?;
            txn.open_table(ACTIVE_RENTALS)?;
            txn.open_table(ACCOUNT_ACTIVE)?;
            txn.open_table(TOTALS)?;
            txn.open_table(LEDGER)?;
            txn.open_table(IDEMPOTENCY)?;
            // Schema 5's table: history starts empty, so opening it is the migration.
            txn.open_table(PRICE_HISTORY)?;
            // Schema 6's: the webhook endpoints and their outbox start empty too.
            txn.open_table(WEBHOOKS)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(DELIVERIES_DUE)?;
            txn.open_table(DELIVERY_STREAMS)?;
            txn.open_table(WEBHOOK_DELIVERIES)?;
            txn.open_table(DELIVERIES_DONE)?;
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
                    Some(v @ 1..=5) => {
                        if v < 2 {
                            migrate_1_to_2(&txn)?;
                        }
                        if v < 3 {
                            migrate_2_to_3(&txn)?;
                        }
                        if v < 4 {
                            migrate_3_to_4(&txn)?;
                        }
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
        let observer = ObserverSlot::default();
        let wobserver = observer.clone();
        let balances = balances::Balances::default();
        let wbalances = balances.clone();
        std::thread::Builder::new()
            .name("spotd-store-writer".into())
            .spawn(move || writer_loop(wdb, rx, &wcommits, &wobserver, &wbalances))
            .map_err(|e| StoreError::WriterThread(Arc::new(e)))?;
        backup::remove_stale(path);
        Ok(Store {
            db,
            balances,
            observer,
            path: Arc::new(path.to_path_buf()),
            jobs: tx,
            commits,
        })
    }

    /// Installs the observer of rental and account writes (once; later calls are
    /// ignored). Writes already queued may run before it.
    pub(crate) fn observe(&self, o: Arc<dyn WriteObserver>) {
        let _ = self.observer.set(o);
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

    /// An account's balance and holds as last committed, from memory when it was
    /// written or read since start-up, else from the store (once).
    pub async fn balance(&self, id: &str) -> Result<Option<Balance>, StoreError> {
        if let Some(b) = self.balances.get(id) {
            return Ok(Some(b));
        }
        let key = id.to_string();
        let a = self.read(move |rx| rx.account(&key)).await?;
        if let Some(a) = &a {
            self.balances.remember(id, Balance::of(a));
        }
        Ok(a.as_ref().map(Balance::of))
    }

    /// Writes a consistent snapshot of the whole database to a new file beside it,
    /// from one read transaction (the daemon keeps serving meanwhile), and answers it
    /// open for reading and already unlinked: nothing is left on disk once the caller
    /// drops it, and a crash midway leaves a `*.backup-*.tmp` file that the next open
    /// removes.
    pub async fn backup(&self) -> Result<(std::fs::File, BackupStats), StoreError> {
        let db = self.db.clone();
        let dest = backup::temp_path(&self.path);
        let r = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let stats = backup::snapshot_to(&txn, &dest);
            drop(txn);
            let opened = stats.and_then(|s| {
                std::fs::File::open(&dest)
                    .map(|f| (f, s))
                    .map_err(|e| StoreError::Backup(format!("reopening {}: {e}", dest.display())))
            });
            let _ = std::fs::remove_file(&dest);
            opened
        })
        .await;
        match r {
            Ok(r) => r,
            Err(e) => Err(StoreError::ReadTask(Arc::new(e))),
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
                observer: self.observer.get().map(|o| &**o),
                outbox: Cell::new(false),
                accounts: Default::default(),
            };
            f(&tx).map(|v| (v, tx.outbox.get(), tx.accounts.take()))
        };
        match r {
            Ok((v, outbox, accounts)) => {
                txn.commit().map_err(StoreError::from)?;
                self.balances.committed(accounts);
                if let (true, Some(o)) = (outbox, self.observer.get()) {
                    o.committed();
                }
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
    pub fn close(self) {
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

/// Schema 3 -> 4: `rentals_by_time` from every rental (one pass, once).
fn migrate_3_to_4(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let rentals = txn.open_table(RENTALS)?;
    let mut by_time = txn.open_table(RENTALS_BY_TIME)?;
    for item in rentals.iter()? {
        let (_, v) = item?;
        let r = Rental::from_bytes(v.value())?;
        by_time.insert((r.created_at, r.id.as_str()), ())?;
    }
    Ok(())
}

/// Schema 2 -> 3: `totals` from every rental and ledger entry (one pass over history,
/// once; from then on the writes keep it).
fn migrate_2_to_3(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut totals: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for item in txn.open_table(RENTALS)?.iter()? {
        let (_, v) = item?;
        let r = Rental::from_bytes(v.value())?;
        *totals.entry(writes::state_key(r.state)).or_default() += 1;
    }
    for item in txn.open_table(LEDGER)?.iter()? {
        let (_, v) = item?;
        let e = crate::model::LedgerEntry::from_bytes(v.value())?;
        if let Some((k, d)) = writes::ledger_total(&e) {
            *totals.entry(k.to_string()).or_default() += d;
        }
    }
    let mut t = txn.open_table(TOTALS)?;
    for (k, v) in totals {
        t.insert(k.as_str(), v)?;
    }
    Ok(())
}

/// Schema 1 -> 2: `account_active` from `active_rentals` (one pass over live rentals).
fn migrate_1_to_2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let active = txn.open_table(ACTIVE_RENTALS)?;
    let rentals = txn.open_table(RENTALS)?;
    let mut by_account = txn.open_table(ACCOUNT_ACTIVE)?;
    for item in active.iter()? {
        let (k, _) = item?;
        if let Some(r) = reads::get_rec::<Rental>(&rentals, k.value())? {
            by_account.insert((r.account_id.as_str(), r.id.as_str()), ())?;
        }
    }
    Ok(())
}
