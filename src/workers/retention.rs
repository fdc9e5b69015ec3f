//! Retention, once an hour: what only matters for 24 h is swept (idempotency records,
//! since a key used again after its window is a new operation anyway, and the markers
//! of idempotent credits), and so is price history older than
//! `history.retention_days`, in one pass over each table in batches of 1,000 rows, one
//! commit each; and hosted request charges older than `billing.request_detail_days`
//! are folded into one charge per account, model and UTC day (`ledger::fold`); webhook
//! deliveries that finished more than `webhooks.retention_days` (7) ago are swept.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Signal};
use crate::error::Error;
use crate::ledger::fold::{self, FoldStep};
use crate::store::{HistorySweep, Store, StoreError, SweepCursor};

/// Idempotency records and credit markers live this long.
pub(crate) const KEEP_MS: i64 = 24 * 3600 * 1000;
const EVERY_MS: i64 = 3600 * 1000;
const BATCH: usize = 1000;
/// Ledger entries examined per fold transaction (whole days: see `fold_requests`).
const FOLD_BATCH: usize = 5000;

/// What one round folded, summed over accounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Folded {
    pub removed: usize,
    pub folded: usize,
}

/// Folds every account's request charges from the UTC days that ended more than
/// `detail_days` ago. One read finds the accounts with something old past their fold
/// marker; only those get write transactions.
pub(crate) async fn fold_once(
    store: &Store,
    clock: &Clock,
    detail_days: u64,
) -> Result<Folded, Error> {
    let before = fold::day_start(days_ago(clock, detail_days));
    let due: Vec<String> = store
        .read(move |rx| {
            let mut due = Vec::new();
            for a in rx.accounts()? {
                let after: u64 = rx.meta(&format!("fold:{}", a.id))?.unwrap_or(0);
                if rx
                    .ledger_after(&a.id, after, 1)?
                    .first()
                    .is_some_and(|e| e.at < before)
                {
                    due.push(a.id);
                }
            }
            Ok::<_, StoreError>(due)
        })
        .await?;
    let mut out = Folded::default();
    for account in due {
        loop {
            let a = account.clone();
            let step: FoldStep = store
                .write(move |tx| fold::fold_requests(tx, &a, before, FOLD_BATCH))
                .await?;
            out.removed += step.removed;
            out.folded += step.folded;
            if step.done || step.examined == 0 {
                break;
            }
        }
    }
    Ok(out)
}

/// One sweep: answers how many (idempotency records, credit markers) it removed.
pub(crate) async fn sweep_once(store: &Store, clock: &Clock) -> Result<(usize, usize), StoreError> {
    let cutoff = clock.now() - KEEP_MS;
    let mut total = (0, 0);
    let mut cursor = SweepCursor::start();
    // One pass over each table, BATCH rows a commit: the writer is never held long.
    while !cursor.done() {
        let from = cursor.clone();
        let (a, b, next) = store
            .write(move |tx| tx.sweep_expired(cutoff, BATCH, &from))
            .await?;
        total = (total.0 + a, total.1 + b);
        cursor = next;
    }
    Ok(total)
}

/// The time `days` days before now (far in the past for an absurd `days`).
fn days_ago(clock: &Clock, days: u64) -> crate::clock::Millis {
    let keep = i64::try_from(days)
        .unwrap_or(i64::MAX)
        .saturating_mul(fold::DAY_MS);
    clock.now().saturating_sub(keep)
}

/// Removes price history rows of hours that started more than `retention_days` ago;
/// answers how many.
pub(crate) async fn sweep_history(
    store: &Store,
    clock: &Clock,
    retention_days: u64,
) -> Result<usize, StoreError> {
    let cutoff = days_ago(clock, retention_days);
    let mut total = 0;
    let mut cursor = HistorySweep::start();
    while cursor.gpu.is_some() {
        let from = cursor.clone();
        let (n, next) = store
            .write(move |tx| tx.sweep_history(cutoff, BATCH, &from))
            .await?;
        total += n;
        cursor = next;
    }
    Ok(total)
}

/// Removes webhook deliveries that finished (delivered or given up) more than
/// `retention_days` ago; answers how many. Pending ones stay whatever their age.
pub(crate) async fn sweep_deliveries(
    store: &Store,
    clock: &Clock,
    retention_days: u64,
) -> Result<usize, StoreError> {
    let cutoff = days_ago(clock, retention_days);
    let mut total = 0;
    loop {
        let (n, more) = store
            .write(move |tx| tx.sweep_deliveries(cutoff, BATCH))
            .await?;
        total += n;
        if !more {
            return Ok(total);
        }
    }
}

/// Sweeps at start and every hour until shutdown. The ticker is registered when this
/// is called.
pub(crate) fn run(
    store: Store,
    clock: Clock,
    request_detail_days: u64,
    retention_days: u64,
    webhook_retention_days: u64,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let mut ticker = clock.ticker(Signal::new("retention"));
    async move {
        loop {
            match sweep_once(&store, &clock).await {
                Ok((0, 0)) => {}
                Ok((idem, markers)) => {
                    tracing::info!(idem, markers, "swept expired idempotency records")
                }
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
            match fold_once(&store, &clock, request_detail_days).await {
                Ok(f) if f.folded > 0 => tracing::info!(
                    folded = f.folded,
                    removed = f.removed,
                    "folded old per-request charges"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "folding request charges failed"),
            }
            match sweep_history(&store, &clock, retention_days).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, retention_days, "swept old price history"),
                Err(e) => tracing::warn!(error = %e, "price history sweep failed"),
            }
            match sweep_deliveries(&store, &clock, webhook_retention_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, webhook_retention_days, "swept old webhook deliveries"),
                Err(e) => tracing::warn!(error = %e, "webhook delivery sweep failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.sleep(EVERY_MS) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdempotencyRecord;
    use crate::money::Usd;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_and_markers_go_after_24_hours_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let clock = Clock::manual(1_800_000_000_000);
        let (a, _) = crate::accounts::create_account(&store, &clock, "t", Usd(0))
            .await
            .unwrap();
        let credit = |once: &str| {
            crate::accounts::add_credit_once(&store, &clock, &a.id, Usd(5), None, Some(once.into()))
        };
        let record = |key: &'static str, at: i64| {
            store.write(move |tx| {
                let rec = IdempotencyRecord {
                    body_hash: "h".into(),
                    status: 200,
                    response: "{}".into(),
                    created_at: at,
                };
                tx.put_idempotency("admin", key, &rec)
            })
        };
        credit("old").await.unwrap();
        record("old", clock.now()).await.unwrap();
        clock.advance(KEEP_MS - 1000);
        credit("new").await.unwrap();
        record("new", clock.now()).await.unwrap();
        assert_eq!(
            sweep_once(&store, &clock).await.unwrap(),
            (0, 0),
            "nothing is 24 h old"
        );
        clock.advance(2000);
        assert_eq!(
            sweep_once(&store, &clock).await.unwrap(),
            (1, 1),
            "the old ones go"
        );
        let id = a.id.clone();
        let (old, new, m_old, m_new) = store
            .read(move |rx| {
                Ok::<_, StoreError>((
                    rx.idempotency("admin", "old")?,
                    rx.idempotency("admin", "new")?,
                    rx.meta::<u64>(&format!("credit:{id}:old"))?,
                    rx.meta::<u64>(&format!("credit:{id}:new"))?,
                ))
            })
            .await
            .unwrap();
        assert!(old.is_none() && m_old.is_none());
        assert!(new.is_some() && m_new.is_some());
        // The books are untouched: two credits of 5.
        let a = crate::accounts::get_account(&store, &a.id).await.unwrap();
        assert_eq!(a.balance, Usd(10));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_is_one_pass_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store
            .write(|tx| {
                for i in 0..25 {
                    let rec = IdempotencyRecord {
                        body_hash: "h".into(),
                        status: 200,
                        response: "{}".into(),
                        // Every third one is young.
                        created_at: if i % 3 == 0 { 10_000 } else { 0 },
                    };
                    tx.put_idempotency("s", &format!("k{i:02}"), &rec)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let mut cursor = SweepCursor::start();
        let (mut removed, mut calls) = (0, 0);
        while !cursor.done() {
            let from = cursor.clone();
            let (a, _, next) = store
                .write(move |tx| tx.sweep_expired(5_000, 10, &from))
                .await
                .unwrap();
            removed += a;
            calls += 1;
            cursor = next;
        }
        assert_eq!(removed, 16, "the 16 old of 25");
        assert_eq!(calls, 3, "25 rows, 10 a batch");
        let left = store
            .read(|rx| {
                let mut n = 0;
                for i in 0..25 {
                    n += usize::from(rx.idempotency("s", &format!("k{i:02}"))?.is_some());
                }
                Ok::<_, StoreError>(n)
            })
            .await
            .unwrap();
        assert_eq!(left, 9);
    }

    /// `n` request charges of `model` at `at`, each `amount` micro-USD and (2, 3) tokens.
    async fn requests(store: &Store, account: &str, model: &str, at: i64, n: u64, amount: i64) {
        let (account, model) = (account.to_string(), model.to_string());
        store
            .write(move |tx| {
                let mut a = tx.account(&account)?.unwrap();
                for i in 0..n {
                    crate::ledger::charge_request(
                        tx,
                        &mut a,
                        Usd(amount),
                        &format!("req_{at}_{i}"),
                        format!("{model}: 2 input + 3 output tokens"),
                        at + i as i64,
                    )?;
                }
                tx.put_account(&a)?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }

    async fn all_entries(store: &Store, account: &str) -> Vec<crate::model::LedgerEntry> {
        let account = account.to_string();
        store
            .read(move |rx| rx.ledger_after(&account, 0, usize::MAX))
            .await
            .unwrap()
    }

    /// A store, a manual clock at 01:00 UTC (every day's requests fall inside that
    /// day) and a funded account.
    async fn fold_fixture() -> (tempfile::TempDir, Store, Clock, crate::model::Account, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let t0 = fold::day_start(1_800_000_000_000) + 3600 * 1000;
        let clock = Clock::manual(t0);
        let (a, _) = crate::accounts::create_account(&store, &clock, "t", Usd(10_000_000))
            .await
            .unwrap();
        (dir, store, clock, a, t0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_request_charges_fold_to_one_per_model_and_day_exactly() {
        use crate::model::LedgerKind;
        let (_dir, store, clock, a, t0) = fold_fixture().await;
        let day = fold::DAY_MS;
        for d in 0..40 {
            requests(&store, &a.id, "model-a", t0 + d * day, 3, 7).await;
            requests(&store, &a.id, "model-b", t0 + d * day + 60_000, 2, 11).await;
        }
        // A lone request of a day stays as it is (it is one entry already).
        requests(&store, &a.id, "model-c", t0 + 60_000 * 2, 1, 5).await;
        let before = all_entries(&store, &a.id).await;
        let totals_before = store.read(|rx| rx.totals()).await.unwrap();
        clock.advance(40 * day);
        // Days 0..8 ended more than 31 days before day 40's 01:00.
        let f = fold_once(&store, &clock, 31).await.unwrap();
        assert_eq!(f.folded, 9 * 2, "{f:?}");
        assert_eq!(f.removed, 9 * (2 + 1), "{f:?}");
        let after = all_entries(&store, &a.id).await;
        assert_eq!(after.len(), before.len() - f.removed);
        let sum = |es: &[crate::model::LedgerEntry]| -> Usd {
            es.iter()
                .filter(|e| matches!(e.kind, LedgerKind::Credit | LedgerKind::Charge))
                .map(|e| e.amount)
                .sum()
        };
        let acct = crate::accounts::get_account(&store, &a.id).await.unwrap();
        assert_eq!(sum(&before), acct.balance);
        assert_eq!(
            sum(&after),
            acct.balance,
            "balance == sum(ledger) across the fold"
        );
        assert_eq!(store.read(|rx| rx.totals()).await.unwrap(), totals_before);
        let folded: Vec<_> = after
            .iter()
            .filter(|e| e.request_id.is_none() && e.kind == LedgerKind::Charge)
            .collect();
        assert_eq!(folded.len(), 18);
        for e in &folded {
            let note = e.note.as_deref().unwrap();
            if note.starts_with("model-a") {
                assert_eq!(e.amount, Usd(-21));
                assert!(
                    note.contains("3 requests, 6 input + 9 output tokens"),
                    "{note}"
                );
            } else {
                assert_eq!(e.amount, Usd(-22));
                assert!(
                    note.contains("2 requests, 4 input + 6 output tokens"),
                    "{note}"
                );
            }
        }
        // Entries younger than the cutoff keep their own request ids.
        let young = after
            .iter()
            .filter(|e| e.at >= t0 + 9 * day && e.kind == LedgerKind::Charge);
        assert!(young.clone().count() == 31 * 5 && young.clone().all(|e| e.request_id.is_some()));
        assert!(after.iter().any(
            |e| e.note.as_deref().is_some_and(|n| n.starts_with("model-c"))
                && e.request_id.is_some()
        ));
        // A second pass finds nothing more; a day later one more day folds.
        assert_eq!(
            fold_once(&store, &clock, 31).await.unwrap(),
            Folded::default()
        );
        clock.advance(day);
        assert_eq!(fold_once(&store, &clock, 31).await.unwrap().folded, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fold_with_a_small_batch_never_splits_a_day() {
        let (_dir, store, _clock, a, t0) = fold_fixture().await;
        let day = fold::DAY_MS;
        for d in 0..5 {
            requests(&store, &a.id, "m", t0 + d * day, 4, 1).await;
        }
        let mut calls = 0;
        loop {
            let id = a.id.clone();
            let before = fold::day_start(t0 + 5 * day);
            let step = store
                .write(move |tx| fold::fold_requests(tx, &id, before, 2))
                .await
                .unwrap();
            calls += 1;
            if step.done {
                break;
            }
            assert_eq!(step.folded, 1, "one whole day per call: {step:?}");
        }
        assert!(calls >= 5);
        let charges: Vec<_> = all_entries(&store, &a.id)
            .await
            .into_iter()
            .filter(|e| e.kind == crate::model::LedgerKind::Charge)
            .collect();
        assert_eq!(charges.len(), 5, "one entry per day");
        assert!(charges.iter().all(|e| e.amount == Usd(-4)));
    }
}
