//! Retention: what only matters for 24 h is swept once an hour: idempotency records
//! (a key used again after its window is a new operation anyway) and the markers of
//! idempotent credits; and price history older than `history.retention_days`. Each
//! round is one pass over each table in batches of 1,000 rows, one commit each.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Signal};
use crate::store::{HistorySweep, Store, StoreError, SweepCursor};

/// Idempotency records and credit markers live this long.
pub(crate) const KEEP_MS: i64 = 24 * 3600 * 1000;
const EVERY_MS: i64 = 3600 * 1000;
const BATCH: usize = 1000;

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

/// Removes price history rows of hours that started more than `retention_days` ago;
/// answers how many.
pub(crate) async fn sweep_history(
    store: &Store,
    clock: &Clock,
    retention_days: u64,
) -> Result<usize, StoreError> {
    let keep = i64::try_from(retention_days)
        .unwrap_or(i64::MAX)
        .saturating_mul(24 * 3600 * 1000);
    let cutoff = clock.now().saturating_sub(keep);
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

/// Sweeps at start and every hour until shutdown. The ticker is registered when this
/// is called.
pub(crate) fn run(
    store: Store,
    clock: Clock,
    retention_days: u64,
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
            match sweep_history(&store, &clock, retention_days).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, retention_days, "swept old price history"),
                Err(e) => tracing::warn!(error = %e, "price history sweep failed"),
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
}
