//! Deployment activity and the idle reaper, which also probes running deployments
//! not yet ready (so `deployment.ready` goes out without a request asking).
//!
//! Activity is proxied requests: a request or stream in flight keeps its deployment
//! active, and the idle clock starts when the last one ends. The reaper sleeps until
//! the earliest idle deadline (woken early when a deployment is created), terminates
//! what has been idle for `idle_timeout_seconds` (reason `idle`), and sleeps again.
//! Last activity is written to the rental at most every `PERSIST_EVERY_MS`, so the
//! idle clock survives a restart without a write per request.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, Signal, Ticker};
use crate::model::{RentalState, TerminationReason};

use super::Inference;

/// Last activity is persisted at most this often per deployment.
pub const PERSIST_EVERY_MS: i64 = 30_000;
/// The reaper re-reads the store at least this often (new deployments, restarts).
const RESCAN_MS: i64 = 60_000;
/// A running deployment whose model server does not answer yet is probed this often.
const UNREADY_PROBE_MS: i64 = 5_000;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    in_flight: u32,
    last: Millis,
    persisted: Millis,
}

pub struct Activity {
    map: Mutex<HashMap<String, Entry>>,
    pub(crate) wake: Signal,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            map: Mutex::new(HashMap::new()),
            wake: Signal::new("reaper"),
        }
    }
}

impl Activity {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut m)
    }

    /// A proxied request to the deployment started.
    pub fn begin(&self, rental: &str, now: Millis) {
        self.with(|m| {
            let e = m.entry(rental.to_string()).or_default();
            e.in_flight += 1;
            e.last = e.last.max(now);
        });
    }

    /// A proxied request ended. Answers whether the activity should be persisted now.
    pub fn end(&self, rental: &str, now: Millis) -> bool {
        self.with(|m| {
            let e = m.entry(rental.to_string()).or_default();
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last = e.last.max(now);
            if now - e.persisted >= PERSIST_EVERY_MS {
                e.persisted = now;
                true
            } else {
                false
            }
        })
    }

    /// A new deployment exists: wake the reaper so it schedules it.
    pub fn register(&self, rental: &str, now: Millis) {
        self.with(|m| {
            let e = m.entry(rental.to_string()).or_default();
            e.last = e.last.max(now);
            e.persisted = now;
        });
        self.wake.notify();
    }

    /// (requests in flight, last activity seen in this process).
    pub fn get(&self, rental: &str) -> (u32, Millis) {
        self.with(|m| {
            m.get(rental)
                .map(|e| (e.in_flight, e.last))
                .unwrap_or((0, 0))
        })
    }

    pub fn forget(&self, rental: &str) {
        self.with(|m| m.remove(rental));
    }
}

/// One reaper round: terminates idle deployments, answers when to look again.
pub async fn reap_once(inf: &Inference) -> Millis {
    let now = inf.clock.now();
    let idle_ms = inf.cfg.idle_timeout_seconds as i64 * 1000;
    let deps = match inf.store.read(|rx| rx.active_rentals()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "reaper: cannot read rentals");
            return now + 5_000;
        }
    };
    let mut next = now + RESCAN_MS;
    let mut running = Vec::new();
    for r in deps.into_iter().filter(|r| r.model.is_some()) {
        match r.state {
            RentalState::Running => {
                running.push(r.clone());
                let (in_flight, last_mem) = inf.activity.get(&r.id);
                if in_flight > 0 {
                    next = next.min(now + idle_ms);
                    continue;
                }
                let last = last_mem
                    .max(r.last_activity_at.unwrap_or(0))
                    .max(r.started_at.unwrap_or(r.created_at));
                let deadline = last + idle_ms;
                if now >= deadline {
                    tracing::info!(rental = %r.id, model = ?r.model, "reaping an idle deployment");
                    match inf
                        .rentals
                        .teardown(None, &r.id, TerminationReason::Idle)
                        .await
                    {
                        Ok(_) => {
                            inf.activity.forget(&r.id);
                            inf.forget_ready(&r.id);
                            crate::metrics::reap();
                        }
                        Err(e) => tracing::warn!(rental = %r.id, error = %e, "reap failed"),
                    }
                } else {
                    next = next.min(deadline);
                }
            }
            // Its idle clock starts once it runs; look again soon.
            RentalState::Provisioning => next = next.min(now + idle_ms.clamp(1_000, 10_000)),
            _ => {}
        }
    }
    // Readiness without waiting for a request (deployment.ready), probed again soon
    // while a model server does not answer yet.
    if inf.probe_unready(running).await {
        next = next.min(now + UNREADY_PROBE_MS);
    }
    next
}

/// Runs the reaper until shutdown, asleep on the inference clock between rounds.
/// The ticker is registered when this is called.
pub fn run(
    inf: std::sync::Arc<Inference>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let mut ticker = inf.clock.ticker(inf.activity.wake.clone());
    async move { run_loop(&inf, &mut ticker, shutdown).await }
}

async fn run_loop(inf: &Inference, ticker: &mut Ticker, shutdown: CancellationToken) {
    loop {
        let next = reap_once(inf).await;
        let now = inf.clock.now();
        let deadline = next.clamp(now + 50, now + RESCAN_MS);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_counts_in_flight_and_throttles_persistence() {
        let a = Activity::default();
        a.register("r", 1_000);
        a.begin("r", 2_000);
        a.begin("r", 2_500);
        assert_eq!(a.get("r"), (2, 2_500));
        assert!(!a.end("r", 3_000), "persisted at register, 2 s ago");
        assert_eq!(a.get("r"), (1, 3_000));
        assert!(a.end("r", 40_000), "30 s since the last persist");
        assert_eq!(a.get("r"), (0, 40_000));
        assert!(!a.end("r", 41_000));
        a.forget("r");
        assert_eq!(a.get("r"), (0, 0));
    }
}
