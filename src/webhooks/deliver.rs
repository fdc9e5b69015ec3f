//! The delivery worker: sends due deliveries, records each attempt, retries with
//! backoff, gives up after 24 h.
//!
//! One loop reads what is due (`store::DueScan`: the due index up to now, never the
//! whole outbox) and starts each attempt on its own task, at most [`MAX_IN_FLIGHT`] at
//! once and [`MAX_PER_ENDPOINT`] per endpoint, so a receiver that hangs holds at most
//! that many slots for at most the attempt timeout, and never the API, the store's
//! writer or another worker. The in-flight set is those seqs and nothing more: memory
//! is bounded by `MAX_IN_FLIGHT` bodies. The loop then sleeps on the clock until the
//! next attempt is due, woken early when a commit makes a delivery due or an attempt
//! ends. Attempts run on the daemon's [`Tasks`]: a graceful stop waits for them to
//! record their outcome, and a manual clock counts them as work in progress.
//!
//! At least once: the outcome is written after the answer, so an attempt cut short by
//! kill -9 is made again after the restart (with the same `webhook-id`, which is how a
//! receiver tells). At start every pending delivery is made due at once, also one a
//! backoff had set for later.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sign;
use crate::clock::{Clock, Millis, Signal};
use crate::http_client::HttpClient;
use crate::model::{Delivery, DeliveryState, Webhook};
use crate::store::{Store, StoreError, Tx};
use crate::tasks::Tasks;

/// Attempts in flight at once, over all endpoints.
pub const MAX_IN_FLIGHT: usize = 16;
/// Attempts in flight at once to one endpoint.
pub const MAX_PER_ENDPOINT: usize = 4;
/// A delivery without a 2xx is retried for this long after its first attempt.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// The longest wait between two attempts.
pub const MAX_BACKOFF_MS: i64 = 10 * 60 * 1000;
/// The loop looks at the due index at least this often (everything that makes a
/// delivery due also wakes it; this is a safety net).
const RESCAN_MS: i64 = 60_000;
/// Deliveries brought forward per transaction at start.
const RESUME_BATCH: usize = 1000;
/// Longest `last_error` kept.
const MAX_ERROR_CHARS: usize = 300;

/// Wait before the next attempt after `attempts` failed ones: 1 s, 2 s, 4 s, ...
/// doubling, at most [`MAX_BACKOFF_MS`].
pub fn backoff_ms(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(20);
    (1000i64 << exp).min(MAX_BACKOFF_MS)
}

/// What one attempt got back: a status, or why there was none.
pub(crate) type Outcome = Result<u16, String>;

/// The delivery worker's state.
pub(crate) struct Deliverer {
    store: Store,
    clock: Clock,
    tasks: Tasks,
    client: HttpClient,
    /// How long one attempt may take (connect, send, response headers).
    timeout: Duration,
    /// Woken by commits that make a delivery due and by attempts that end.
    pub(crate) wake: Signal,
    /// Seq -> endpoint id of each attempt in flight.
    in_flight: Mutex<HashMap<u64, String>>,
}

impl Deliverer {
    pub(crate) fn new(
        store: Store,
        clock: Clock,
        tasks: Tasks,
        timeout: Duration,
        wake: Signal,
    ) -> Deliverer {
        Deliverer {
            client: HttpClient::new(timeout),
            store,
            clock,
            tasks,
            timeout,
            wake,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round: starts what is due and has a free slot; answers when to look again.
    async fn round(self: &Arc<Self>) -> Millis {
        let now = self.clock.now();
        let taken = self.in_flight().clone();
        let free = MAX_IN_FLIGHT.saturating_sub(taken.len());
        if free == 0 {
            // An attempt that ends wakes the loop.
            return now + RESCAN_MS;
        }
        let mut per_endpoint: HashMap<String, usize> = HashMap::new();
        for w in taken.values() {
            *per_endpoint.entry(w.clone()).or_default() += 1;
        }
        let scan = self
            .store
            .read(move |rx| {
                rx.due_deliveries(now, free, |d| {
                    if taken.contains_key(&d.seq) {
                        return true;
                    }
                    let n = per_endpoint.entry(d.webhook_id.clone()).or_default();
                    if *n >= MAX_PER_ENDPOINT {
                        return true;
                    }
                    *n += 1;
                    false
                })
            })
            .await;
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot read due deliveries");
                return now + 5_000;
            }
        };
        let mut orphans = Vec::new();
        for (d, w) in scan.due {
            match w {
                Some(w) => self.start(d, w),
                None => orphans.push(d),
            }
        }
        if !orphans.is_empty() {
            // Their endpoint was deleted: they go, and the next of each stream is due
            // now (to go in turn).
            let n = orphans.len();
            let res = self
                .store
                .write(move |tx| {
                    orphans
                        .iter()
                        .try_for_each(|d| tx.drop_delivery(d, now).map(|_| ()))
                })
                .await;
            return match res {
                Ok(()) => {
                    tracing::debug!(n, "webhooks: dropped deliveries of deleted endpoints");
                    now
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot drop deliveries");
                    now + 5_000
                }
            };
        }
        match scan.next {
            // More is due than could start: an attempt that ends wakes the loop.
            Some(at) if at <= now => now + RESCAN_MS,
            Some(at) => at.min(now + RESCAN_MS),
            None => now + RESCAN_MS,
        }
    }

    /// At start: every pending delivery is due now, also those a backoff had set for
    /// later (the daemon was down meanwhile; the receiver may well be up again).
    async fn resume(&self) {
        let now = self.clock.now();
        let mut moved = 0;
        loop {
            match self
                .store
                .write(move |tx| tx.bring_forward(now, RESUME_BATCH))
                .await
            {
                Ok((n, more)) => {
                    moved += n;
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot resume pending deliveries");
                    break;
                }
            }
        }
        if moved > 0 {
            tracing::info!(moved, "webhooks: pending deliveries resumed");
        }
    }

    /// Starts one attempt on its own task.
    fn start(self: &Arc<Self>, d: Delivery, w: Webhook) {
        self.in_flight().insert(d.seq, w.id.clone());
        let me = self.clone();
        self.tasks.spawn(async move {
            let seq = d.seq;
            let outcome = me.send(&d, &w).await;
            let now = me.clock.now();
            let (hook, status) = (w.id.clone(), outcome.clone().ok());
            let res = me
                .store
                .write(move |tx| record_attempt(tx, seq, outcome, now))
                .await;
            match res {
                Ok(state) => {
                    let outcome = match state {
                        Some(DeliveryState::Delivered) => "delivered",
                        Some(DeliveryState::Failed) => "failed",
                        _ => "retry",
                    };
                    if state.is_some() {
                        crate::metrics::webhook_attempt(outcome);
                    }
                    tracing::debug!(webhook = %hook, seq, status, outcome, "webhook attempt");
                    if state == Some(DeliveryState::Failed) {
                        tracing::warn!(webhook = %hook, seq, "webhook delivery given up after 24 h");
                    }
                }
                Err(e) => tracing::warn!(webhook = %hook, seq, error = %e, "webhooks: cannot record an attempt"),
            }
            me.in_flight().remove(&seq);
            me.wake.notify();
        });
    }

    /// One POST with the Standard Webhooks headers, signed at the time it is sent.
    async fn send(&self, d: &Delivery, w: &Webhook) -> Outcome {
        let ts = self.clock.now().div_euclid(1000);
        let sig = format!(
            "v1,{}",
            sign::signature(&w.key, &d.event_id, ts, d.body.as_bytes())
        );
        let ts = ts.to_string();
        let headers = [
            ("webhook-id", d.event_id.as_str()),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", sig.as_str()),
            (
                "user-agent",
                concat!("spotd-webhooks/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        self.client
            .post_for_status(&w.url, &headers, d.body.clone().into_bytes(), self.timeout)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Writes what an attempt got: delivered on a 2xx; else due again after
/// [`backoff_ms`], or given up once 24 h have passed since its first attempt. A
/// delivery no longer pending (swept, dropped) is left alone. Answers its new state.
pub(crate) fn record_attempt(
    tx: &Tx<'_>,
    seq: u64,
    outcome: Outcome,
    now: Millis,
) -> Result<Option<DeliveryState>, StoreError> {
    let Some(mut d) = tx.delivery(seq)? else {
        return Ok(None);
    };
    if d.state != DeliveryState::Pending {
        return Ok(None);
    }
    d.attempts += 1;
    d.last_attempt_at = Some(now);
    let first = *d.first_attempt_at.get_or_insert(now);
    let ok = match outcome {
        Ok(status) => {
            d.last_status = Some(status);
            let ok = (200..300).contains(&status);
            d.last_error = (!ok).then(|| format!("the endpoint answered {status}"));
            ok
        }
        Err(e) => {
            d.last_status = None;
            d.last_error = Some(e.chars().take(MAX_ERROR_CHARS).collect());
            false
        }
    };
    let state = if ok {
        DeliveryState::Delivered
    } else if now - first >= GIVE_UP_AFTER_MS {
        DeliveryState::Failed
    } else {
        let next = now + backoff_ms(d.attempts);
        tx.reschedule_delivery(&mut d, next)?;
        return Ok(Some(DeliveryState::Pending));
    };
    tx.finish_delivery(&mut d, state, now)?;
    Ok(Some(state))
}

/// Runs the delivery worker until shutdown. The ticker is registered when this is
/// called; attempts still in flight at shutdown finish on the daemon's tasks.
pub(crate) fn run(
    d: Arc<Deliverer>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let mut ticker = d.clock.ticker(d.wake.clone());
    async move {
        d.resume().await;
        loop {
            let next = d.round().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.sleep_until(next) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_ten_minutes() {
        let waits: Vec<i64> = (1..=12).map(backoff_ms).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600].map(|s| s * 1000)
        );
        assert_eq!(backoff_ms(1000), MAX_BACKOFF_MS);
        // 24 h of retries is about 150 attempts, not thousands.
        let (mut t, mut n) = (0, 0);
        while t < GIVE_UP_AFTER_MS {
            n += 1;
            t += backoff_ms(n);
        }
        assert!((140..160).contains(&n), "{n}");
    }
}
