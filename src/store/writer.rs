//! The writer thread: the one owner of write transactions. It takes every operation
//! waiting in its queue (up to [`MAX_BATCH`]) into one transaction and one commit (one
//! fsync), then answers each caller with the commit's outcome. An operation that
//! panics, or fails after it wrote, rolls its transaction back: the operations before
//! it answer [`StoreError::RolledBack`], the ones after it run in a fresh transaction.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use redb::Database;

use super::{ObserverSlot, StoreError, Tx};

/// What the writer runs: the operation, returning what to do once the commit is known.
pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs one operation; answers its completion and whether it failed after writing.
pub(super) type Op = Box<dyn FnOnce(&Tx<'_>) -> (Completion, bool) + Send>;

pub(super) enum Job {
    Run(Op),
    /// Finish what is queued, release the database file, then answer.
    Stop(std::sync::mpsc::Sender<()>),
}

/// Up to this many queued operations share one commit.
const MAX_BATCH: usize = 512;

pub(super) fn writer_loop(
    db: Arc<Database>,
    rx: mpsc::Receiver<Job>,
    commits: &AtomicU64,
    observer: &ObserverSlot,
    balances: &super::balances::Balances,
) {
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
        run_batch(&db, pending, commits, observer, balances);
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

fn run_batch(
    db: &Database,
    pending: Vec<Op>,
    commits: &AtomicU64,
    observer: &ObserverSlot,
    balances: &super::balances::Balances,
) {
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
            let obs = observer.get().map(|o| &**o);
            let tx = Tx {
                txn: &txn,
                wrote: Cell::new(false),
                observer: obs,
                outbox: Cell::new(false),
                accounts: Default::default(),
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
            let outbox = tx.outbox.get();
            let written = tx.accounts.take();
            let res = txn.commit().map_err(StoreError::from);
            commits.fetch_add(1, Ordering::Relaxed);
            if res.is_ok() {
                balances.committed(written);
            }
            // Before the callers hear of the commit, so a delivery made due by a write
            // is already signalled when that write is acknowledged.
            if let (Ok(()), true, Some(o)) = (&res, outbox, obs) {
                o.committed();
            }
            for c in done {
                c(res.clone());
            }
            break;
        }
    }
}
