//! Ledger operations per second with durable commits: 64 concurrent callers through
//! the group-commit writer (`Store::write`) against the same operations with one
//! commit each (`Store::write_unbatched`), in the same run on the same machine.
//!
//! One operation = place a hold for a new rental, charge it, release the rest: three
//! ledger entries plus the rental and the account, in one transaction.
//!
//! Each phase runs on a fresh database, so the figure is that of a fixed size (the
//! old bench reused one growing file and its figure slid within a run).
//!
//! Run: `cargo bench --bench ledger`

#[path = "support/mod.rs"]
mod support;
use std::time::Instant;
use support::offer;

use spotd::error::Error;
use spotd::ledger;
use spotd::model::{Account, Rental, RentalState};
use spotd::money::Usd;
use spotd::store::{Store, Tx};

const CALLERS: usize = 64;

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
                    balance: Usd::from_dollars(1_000_000),
                    ..Account::new(id.clone(), id.clone(), 0)
                })
                .map_err(Error::from)
            })
            .expect("seed");
    }
    (dir, store, ids)
}

/// Group-commit ops per phase (64 callers x this), and one-commit-per-op ops.
const GROUP_OPS_PER_CALLER: usize = 100;
const SINGLE_OPS_PER_CALLER: usize = 8;
const ROUNDS: usize = 3;

/// One phase on a fresh database (64 funded accounts, nothing else), so every phase
/// measures the same thing: the first `64 x per_caller` ops of an empty data dir.
fn phase(rt: &tokio::runtime::Runtime, grouped: bool, per_caller: usize) -> (f64, u64, f64) {
    let (dir, store, accounts) = setup();
    let start = Instant::now();
    if grouped {
        rt.block_on(async {
            let mut hs = Vec::with_capacity(CALLERS);
            for (ci, acct) in accounts.iter().enumerate() {
                let (s, acct) = (store.clone(), acct.clone());
                hs.push(tokio::spawn(async move {
                    for k in 0..per_caller {
                        let (a, id) = (acct.clone(), format!("rnt_g{ci}_{k}"));
                        s.write(move |tx| op(tx, &a, id)).await.expect("op");
                    }
                }));
            }
            for h in hs {
                h.await.expect("join");
            }
        });
    } else {
        std::thread::scope(|sc| {
            for (ci, acct) in accounts.iter().enumerate() {
                let s = &store;
                sc.spawn(move || {
                    for k in 0..per_caller {
                        let id = format!("rnt_u{ci}_{k}");
                        s.write_unbatched(|tx| op(tx, acct, id)).expect("op");
                    }
                });
            }
        });
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = (CALLERS * per_caller) as f64;
    let bytes = std::fs::metadata(dir.path().join("bench.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let per_commit = ops / store.commits().max(1) as f64;
    store.close();
    (ops / secs, bytes, per_commit)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "ledger ops (hold + charge + release, one transaction each), {CALLERS} callers, each \
         phase on a fresh database: {} ops grouped, {} ops one commit each",
        CALLERS * GROUP_OPS_PER_CALLER,
        CALLERS * SINGLE_OPS_PER_CALLER
    );
    let (mut g_all, mut s_all) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (g, gb, per) = phase(&rt, true, GROUP_OPS_PER_CALLER);
        let (s, _, _) = phase(&rt, false, SINGLE_OPS_PER_CALLER);
        println!(
            "  round {round}: group commit {g:>8.0} ops/s ({per:.1} ops a commit)   one commit per \
             op {s:>7.0} ops/s   ratio {:>5.1}x   (file {:.1} MB)",
            g / s,
            gb as f64 / 1e6
        );
        g_all.push(g);
        s_all.push(s);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (g, s) = (med(&mut g_all), med(&mut s_all));
    println!(
        "  median: group commit {g:.0} ops/s, one commit per op {s:.0} ops/s, {:.1}x",
        g / s
    );
}
