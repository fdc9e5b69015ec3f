//! Ledger operations per second with durable commits: 64 concurrent callers through
//! the group-commit writer (`Store::write`) against the same operations with one
//! commit each (`Store::write_unbatched`), in the same run on the same machine.
//!
//! One operation = place a hold for a new rental, charge it, release the rest: three
//! ledger entries plus the rental and the account, in one transaction.
//!
//! Run: `cargo bench --bench ledger`

#[path = "support/mod.rs"]
mod support;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::offer;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spotd::error::Error;
use spotd::ledger;
use spotd::model::{Account, Rental, RentalState};
use spotd::money::Usd;
use spotd::store::{Store, Tx};

const CALLERS: usize = 64;
const OPS_PER_CALLER: usize = 8;

fn rental(id: String, account: &str) -> Rental {
    Rental {
        state: RentalState::Running,
        started_at: Some(0),
        ..Rental::intent(id, account.to_string(), offer(), Usd(416_667), 0)
    }
}

/// hold + charge + release for a fresh rental of `account`.
fn op(tx: &Tx<'_>, account: &str, rental_id: String) -> Result<(), Error> {
    let mut a = tx
        .account(account)?
        .ok_or_else(|| Error::Bug("no account".into()))?;
    let mut r = rental(rental_id, account);
    ledger::place_hold(tx, &mut a, &mut r, 0)?;
    ledger::charge_rental(tx, &mut a, &mut r, Usd(1_000), None, 0)?;
    ledger::release_hold(tx, &mut a, &mut r, 0)?;
    r.state = RentalState::Terminated;
    tx.put_rental(&r)?;
    tx.put_account(&a)?;
    Ok(())
}

fn setup() -> (tempfile::TempDir, Store, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("bench.redb")).expect("open");
    let ids: Vec<String> = (0..CALLERS).map(|i| format!("acct_bench{i}")).collect();
    for id in &ids {
        store
            .write_unbatched(|tx| {
                tx.put_account(&Account {
                    id: id.clone(),
                    name: id.clone(),
                    created_at: 0,
                    balance: Usd::from_dollars(1_000_000),
                    held: Usd::ZERO,
                    ledger_seq: 0,
                })
                .map_err(Error::from)
            })
            .expect("seed");
    }
    (dir, store, ids)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, store, accounts) = setup();
    let accounts = Arc::new(accounts);
    let mut g = c.benchmark_group("ledger_ops_64_callers");
    g.throughput(Throughput::Elements((CALLERS * OPS_PER_CALLER) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));

    g.bench_function("group_commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for it in 0..iters {
                let start = Instant::now();
                rt.block_on(async {
                    let mut hs = Vec::with_capacity(CALLERS);
                    for (ci, acct) in accounts.iter().enumerate() {
                        let s = store.clone();
                        let acct = acct.clone();
                        hs.push(tokio::spawn(async move {
                            for k in 0..OPS_PER_CALLER {
                                let id = format!("rnt_g{it}_{ci}_{k}_{}", fastrand());
                                let a = acct.clone();
                                s.write(move |tx| op(tx, &a, id)).await.expect("op");
                            }
                        }));
                    }
                    for h in hs {
                        h.await.expect("join");
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });

    g.bench_function("commit_per_op", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for it in 0..iters {
                let start = Instant::now();
                std::thread::scope(|sc| {
                    for (ci, acct) in accounts.iter().enumerate() {
                        let s = &store;
                        sc.spawn(move || {
                            for k in 0..OPS_PER_CALLER {
                                let id = format!("rnt_u{it}_{ci}_{k}_{}", fastrand());
                                s.write_unbatched(|tx| op(tx, acct, id)).expect("op");
                            }
                        });
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// A cheap unique suffix so repeated criterion iterations never reuse a rental id.
fn fastrand() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

criterion_group!(benches, bench);
criterion_main!(benches);
