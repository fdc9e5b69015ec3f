//! The store's own behaviour: group commits, isolation of a failing operation, and
//! the indexes kept with each write.

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

/// An account's page of rentals comes from its index, newest first, strictly before
/// the cursor, filtered, and never shows another account's.
#[test]
fn account_pages_walk_the_index_newest_first() {
    use crate::model::RentalState;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mk = |i: i64, acct: &str, state: RentalState| {
        let mut r = crate::ledger::tests::rental(crate::money::Usd(1), crate::money::Usd(0));
        (r.id, r.account_id, r.state, r.created_at) = (format!("rnt_{i}"), acct.into(), state, i);
        r
    };
    let rentals: Vec<_> = (1..=6)
        .map(|i| {
            let state = if i % 2 == 0 {
                RentalState::Terminated
            } else {
                RentalState::Running
            };
            mk(i, if i == 4 { "acct_b" } else { "acct_a" }, state)
        })
        .collect();
    rt.block_on(store.write(move |tx| rentals.iter().try_for_each(|r| tx.put_rental(r))))
        .unwrap();
    let page = |before: Option<(i64, &str)>, limit, only: Option<RentalState>| {
        store
            .read_blocking(|rx| {
                rx.account_rentals_page("acct_a", before, limit, |r| {
                    only.is_none_or(|s| r.state == s)
                })
            })
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None, 2, None), ["rnt_6", "rnt_5"]);
    assert_eq!(page(Some((5, "rnt_5")), 2, None), ["rnt_3", "rnt_2"]);
    assert_eq!(page(Some((2, "rnt_2")), 2, None), ["rnt_1"]);
    assert_eq!(
        page(None, 10, Some(RentalState::Running)),
        ["rnt_5", "rnt_3", "rnt_1"]
    );
    let live = store
        .read_blocking(|rx| rx.account_live_rentals("acct_a"))
        .unwrap();
    assert_eq!(live.len(), 3);
    // Every account's, from the time index.
    let all = |before: Option<(i64, &str)>| {
        store
            .read_blocking(|rx| rx.rentals_page(before, 3, |_| true))
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(all(None), ["rnt_6", "rnt_5", "rnt_4"]);
    assert_eq!(all(Some((4, "rnt_4"))), ["rnt_3", "rnt_2", "rnt_1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_balances_are_in_memory_and_rolled_back_ones_are_not() {
    use crate::model::Account;
    use crate::money::Usd;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let acct = |balance: i64, seq: u64| Account {
        balance: Usd(balance),
        held: Usd(10),
        ledger_seq: seq,
        ..Account::new("acct_b".into(), "b".into(), 0)
    };
    assert_eq!(store.balance("acct_b").await.unwrap(), None);
    store
        .write(move |tx| tx.put_account(&acct(100, 1)))
        .await
        .unwrap();
    let b = store.balance("acct_b").await.unwrap().unwrap();
    assert_eq!((b.balance, b.available(), b.seq), (Usd(100), Usd(90), 1));
    // A write that fails after writing is rolled back: memory keeps the committed one.
    let failed = store
        .write(move |tx| -> Result<(), StoreError> {
            tx.put_account(&acct(5, 2))?;
            Err(StoreError::Codec("refused".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        store.balance("acct_b").await.unwrap().unwrap().balance,
        Usd(100)
    );
    // What is in memory is what the file holds (a fresh store reads it back).
    store
        .write(move |tx| tx.put_account(&acct(70, 3)))
        .await
        .unwrap();
    assert_eq!(
        store.balance("acct_b").await.unwrap().unwrap().balance,
        Usd(70)
    );
    // A figure read from the store never overwrites a newer committed one.
    store
        .balances
        .remember("acct_b", crate::store::Balance::of(&acct(1, 2)));
    assert_eq!(
        store.balance("acct_b").await.unwrap().unwrap().balance,
        Usd(70)
    );
    store.close();
    let again = Store::open(&dir.path().join("t.redb")).unwrap();
    assert_eq!(
        again.balance("acct_b").await.unwrap().unwrap().balance,
        Usd(70)
    );
}
