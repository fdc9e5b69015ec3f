//! The rental workers: provider sync (provisioning -> running, preemptions, teardown
//! confirmation, timeouts, idle and max-duration limits), metering, and the orphan
//! sweep that reconciles every provider's instances with spotd's rentals.
//!
//! Each round is one bounded batch (`sync_once`, `meter_once`, `reconcile_once`) that
//! tests call directly with a manual clock; `run` loops them until shutdown.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::clock::{parse_rfc3339, Millis, Signal, Ticker};
use crate::error::Result;
use crate::guards;
use crate::ledger::{self, Metered};
use crate::model::{Rental, RentalState, TerminationReason};
use crate::providers::{Instance, InstanceState};
use crate::rentals::{lifecycle, Rentals};

/// How often a running rental's `seen_running_at` is written.
const SEEN_EVERY_MS: i64 = 5_000;

/// A label spotd gave an instance.
fn is_spotd_label(label: &str) -> bool {
    label.starts_with("rnt_")
}

/// What the sync round decided for one rental.
enum Step {
    Nothing,
    Adopt(Instance),
    Running(Instance),
    Seen,
    /// Running, and the provider now reports another endpoint or SSH address (a new
    /// IP or port after a host restart; the in-process sandbox after a daemon restart).
    Moved(Instance),
    Fail(TerminationReason, String),
    /// Ended under the rental; `true` when the instance still exists and must be
    /// destroyed (a stopped Vast bid, an exited container: they keep billing storage).
    Interrupt(TerminationReason, Millis, bool),
    Teardown(TerminationReason),
    Terminate,
    /// The instance is gone; the provider's last word on it, when it gave one.
    Confirmed(Option<Instance>),
    /// The listing did not show the instance: ask for it by id before acting (listings
    /// can lag), and take the inner step only if it is really gone.
    Vanished(Box<Step>),
}

/// One sync round over every active rental. Answers how many rentals changed.
pub async fn sync_once(rs: &Rentals) -> usize {
    let active: Vec<Rental> = match rs.store.read(|rx| rx.active_rentals()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "rental sync: cannot read active rentals");
            return 0;
        }
    };
    let mut by_provider: BTreeMap<String, Vec<Rental>> = BTreeMap::new();
    for r in active {
        by_provider.entry(r.provider.clone()).or_default().push(r);
    }
    let mut changed = 0;
    for (name, rentals) in by_provider {
        let Some(provider) = rs.registry.get(&name) else {
            // Its provider left the config: a rental that never got an instance can
            // only fail (nothing to terminate); the others need the operator.
            for r in rentals {
                if r.state == RentalState::Provisioning && r.instance_id.is_none() {
                    let step = Step::Fail(
                        TerminationReason::ProviderError,
                        format!("provider '{name}' is no longer configured"),
                    );
                    if apply(rs, r, step).await {
                        changed += 1;
                    }
                } else {
                    tracing::warn!(rental = %r.id, provider = %name, "rental of a provider no longer configured");
                }
            }
            continue;
        };
        let list = match provider.list_instances().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(provider = %name, error = %e, "rental sync: cannot list instances");
                continue;
            }
        };
        let by_id: HashMap<&str, &Instance> = list.iter().map(|i| (i.id.as_str(), i)).collect();
        let by_label: HashMap<&str, &Instance> =
            list.iter().map(|i| (i.label.as_str(), i)).collect();
        // Every rental's step at once: their writes reach the store together and
        // share one group commit instead of one fsync each.
        let steps = rentals.into_iter().map(|r| {
            let inst = r
                .instance_id
                .as_deref()
                .and_then(|id| by_id.get(id))
                .or_else(|| by_label.get(r.id.as_str()))
                .copied();
            let step = decide(rs, &r, inst, rs.clock.now());
            apply(rs, r, step)
        });
        changed += join_all(steps).await.into_iter().filter(|c| *c).count();
    }
    changed
}

fn decide(rs: &Rentals, r: &Rental, inst: Option<&Instance>, now: Millis) -> Step {
    match r.state {
        RentalState::Provisioning => {
            let timeout_at = r.created_at + rs.cfg.provision_timeout_seconds as i64 * 1000;
            match inst {
                Some(i) if r.instance_id.is_none() => Step::Adopt(i.clone()),
                Some(i) => match i.state {
                    InstanceState::Running => Step::Running(i.clone()),
                    s if s.is_gone() => Step::Fail(
                        TerminationReason::ProvisionFailed,
                        format!("the instance ended while provisioning ({s:?})"),
                    ),
                    _ if now >= timeout_at => Step::Fail(
                        TerminationReason::ProvisionFailed,
                        format!(
                            "not running after {} s (provision_timeout_seconds)",
                            rs.cfg.provision_timeout_seconds
                        ),
                    ),
                    _ => Step::Nothing,
                },
                None if r.instance_id.is_some() => Step::Vanished(Box::new(Step::Fail(
                    TerminationReason::ProviderError,
                    "the provider no longer knows the instance".into(),
                ))),
                // From the last attempt: a rent moving through candidates updates it.
                None if now >= r.updated_at.max(r.created_at) + rs.cfg.create_grace_ms => {
                    Step::Fail(
                        TerminationReason::ProviderError,
                        "the provider never created the instance".into(),
                    )
                }
                None => Step::Nothing,
            }
        }
        RentalState::Running => match inst {
            Some(i) if i.state == InstanceState::Running => {
                let started = r.started_at.unwrap_or(r.created_at);
                if let Some(max) = r.max_duration_seconds {
                    if now >= started + max as i64 * 1000 {
                        return Step::Teardown(TerminationReason::MaxDuration);
                    }
                }
                if let Some(idle) = r.idle_timeout_seconds {
                    let last = r.last_activity_at.unwrap_or(started);
                    if now >= last + idle as i64 * 1000 {
                        return Step::Teardown(TerminationReason::Idle);
                    }
                }
                let moved = (i.endpoint.is_some() && i.endpoint != r.endpoint)
                    || (i.ssh.is_some() && i.ssh != r.ssh);
                if moved {
                    return Step::Moved(i.clone());
                }
                // Recorded every few seconds, not every poll: it only bounds how much
                // of a vanished instance's last moments is billed.
                if now - r.seen_running_at.unwrap_or(0) >= SEEN_EVERY_MS {
                    Step::Seen
                } else {
                    Step::Nothing
                }
            }
            Some(i) if i.state.is_gone() || i.state == InstanceState::Terminating => {
                let reason = if i.state == InstanceState::Interrupted {
                    TerminationReason::Preempted
                } else {
                    TerminationReason::ProviderError
                };
                let at = i
                    .ended_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .unwrap_or_else(|| r.seen_running_at.unwrap_or(now));
                let destroy = matches!(i.state, InstanceState::Interrupted | InstanceState::Failed);
                Step::Interrupt(reason, at.min(now), destroy)
            }
            Some(_) => Step::Nothing,
            None => Step::Vanished(Box::new(Step::Interrupt(
                TerminationReason::ProviderError,
                r.seen_running_at.unwrap_or(now),
                false,
            ))),
        },
        RentalState::Terminating => match inst {
            None if r.instance_id.is_some() => Step::Confirmed(None),
            None if now >= r.created_at + rs.cfg.create_grace_ms => Step::Confirmed(None),
            None => Step::Nothing,
            Some(i) if i.state.is_gone() => Step::Confirmed(Some(i.clone())),
            Some(i) if r.instance_id.is_none() => Step::Adopt(i.clone()),
            Some(_) if now >= r.next_attempt_at => Step::Terminate,
            Some(_) => Step::Nothing,
        },
        _ => Step::Nothing,
    }
}

async fn apply(rs: &Rentals, r: Rental, step: Step) -> bool {
    if let Step::Vanished(inner) = step {
        let still_there = match (rs.registry.get(&r.provider), &r.instance_id) {
            (Some(p), Some(iid)) => match p.get_instance(iid).await {
                Ok(Some(i)) => !i.state.is_gone(),
                Ok(None) => false,
                // Cannot tell: look again next round.
                Err(_) => true,
            },
            _ => false,
        };
        if still_there {
            return false;
        }
        return Box::pin(apply(rs, r, *inner)).await;
    }
    let id = r.id.clone();
    let provider = r.provider.clone();
    // These end the rental's hold on a machine: the market should show it free again
    // now, not at the provider's next scheduled refresh.
    let frees = matches!(
        step,
        Step::Confirmed(_) | Step::Fail(..) | Step::Interrupt(..)
    );
    let res = match step {
        Step::Nothing | Step::Vanished(_) => return false,
        Step::Seen => rs
            .update(&id, None, |_tx, _a, r, now| {
                if r.state == RentalState::Running {
                    r.seen_running_at = Some(now);
                }
                Ok(())
            })
            .await
            .map(|_| ()),
        Step::Moved(i) => rs
            .update(&id, None, move |_tx, _a, r, now| {
                if r.state == RentalState::Running {
                    tracing::info!(rental = %r.id, endpoint = ?i.endpoint, "the instance's address changed");
                    if i.endpoint.is_some() {
                        r.endpoint = i.endpoint;
                    }
                    if i.ssh.is_some() {
                        r.ssh = i.ssh;
                    }
                    r.seen_running_at = Some(now);
                }
                Ok(())
            })
            .await
            .map(|_| ()),
        Step::Adopt(i) => rs
            .update(&id, None, move |_tx, _a, r, _now| {
                r.instance_id = Some(i.id.clone());
                Ok(())
            })
            .await
            .map(|_| ()),
        Step::Running(i) => rs
            .update(&id, None, move |_tx, _a, r, now| {
                if r.state == RentalState::Provisioning {
                    lifecycle::mark_running(r, &i, now)?;
                }
                Ok(())
            })
            .await
            .map(|_| ()),
        Step::Fail(reason, msg) => {
            let res = rs.fail_provisioning(&id, reason, msg, false).await;
            // A failed rental's instance, if any, is swept: ask for it now.
            if let (Ok(r), Some(p)) = (&res, rs.registry.get(&r.provider)) {
                if let Some(iid) = &r.instance_id {
                    let _ = p.terminate(iid).await;
                }
            }
            res.map(|_| ())
        }
        Step::Interrupt(reason, at, destroy) => {
            let res = rs
                .update(&id, None, move |tx, a, r, now| {
                    if r.state != RentalState::Running {
                        return Ok(false);
                    }
                    lifecycle::interrupt(tx, a, r, reason, at, now)?;
                    Ok(true)
                })
                .await;
            if let Ok((r, true)) = &res {
                rs.notify_preempted(r);
                // The orphan sweep skips ended instances, so this is the one place a
                // preempted-but-still-existing instance is destroyed.
                if let (true, Some(iid), Some(p)) =
                    (destroy, &r.instance_id, rs.registry.get(&r.provider))
                {
                    if let Err(e) = p.terminate(iid).await {
                        tracing::warn!(rental = %r.id, instance = %iid, error = %e,
                            "could not destroy the instance of an interrupted rental");
                    }
                }
            }
            res.map(|_| ())
        }
        Step::Teardown(reason) => rs.teardown(None, &id, reason).await.map(|_| ()),
        Step::Terminate => {
            rs.try_terminate(r).await;
            Ok(())
        }
        Step::Confirmed(i) => rs
            .update(&id, None, move |tx, a, r, now| {
                if r.state == RentalState::Terminating {
                    lifecycle::confirm_gone(tx, a, r, i.as_ref(), now)?;
                }
                Ok(())
            })
            .await
            .map(|_| ()),
    };
    if let Err(e) = res {
        tracing::warn!(rental = %id, error = %e, "rental sync step failed");
        return false;
    }
    if frees {
        rs.registry.refresh_now(&provider);
    }
    true
}

/// One metering round: every running rental is charged up to now; one whose next
/// step cannot be covered is torn down with `insufficient_credit`, one that reached a
/// spend guard with `max_cost` or `budget_exceeded` (billed to that second). Answers
/// how many rentals were metered.
#[cfg(test)]
pub async fn meter_once(rs: &Rentals) -> Result<usize> {
    meter_round(rs).await.map(|r| r.metered)
}

/// What a metering round did.
pub(crate) struct MeterRound {
    pub metered: usize,
    /// The earliest second a spend guard will stop one of the rentals still running,
    /// if nothing else is charged meanwhile: the worker meters again then, so the GPU
    /// goes at that second rather than at the next regular round.
    pub next_limit_at: Option<Millis>,
}

pub(crate) async fn meter_round(rs: &Rentals) -> Result<MeterRound> {
    let running: Vec<Rental> = rs
        .store
        .read(|rx| rx.active_rentals())
        .await?
        .into_iter()
        .filter(|r| r.state == RentalState::Running)
        .collect();
    let step = rs.cfg.metering_interval_seconds;
    let mut ended = Vec::new();
    let mut next_limit_at: Option<Millis> = None;
    // One update per rental, all at once: the writer groups them into one commit.
    let updates = running.iter().map(|r| {
        rs.update(&r.id, None, move |tx, a, r, now| {
            if r.state != RentalState::Running {
                return Ok((Metered::Ok, None));
            }
            let m = ledger::meter(tx, a, r, now, Some(step), now)?;
            match m {
                Metered::Ok => {}
                Metered::OutOfCredit => {
                    lifecycle::begin_teardown(tx, a, r, TerminationReason::InsufficientCredit, now)?
                }
                Metered::Limit { cap, at } => {
                    let detail = format!(
                        "rental {} ended: its {} was reached at {} with a cost of {} USD",
                        r.id,
                        cap.as_str(),
                        crate::clock::rfc3339(at),
                        r.cost
                    );
                    lifecycle::begin_teardown(tx, a, r, cap.reason(), now)?;
                    guards::limit_hit(tx, a, cap, guards::Action::Ended, Some(r), &detail, now)?;
                }
            }
            let deadline = (r.state == RentalState::Running)
                .then(|| guards::deadline(a, r, now))
                .flatten();
            Ok((m, deadline))
        })
    });
    for (r, res) in running.iter().zip(join_all(updates).await) {
        match res {
            Ok((_, (Metered::Ok, Some(d)))) => {
                next_limit_at = Some(next_limit_at.map_or(d, |n| n.min(d)));
            }
            Ok((_, (Metered::Ok, None))) => {}
            Ok((r, (m, _))) => ended.push((r, m)),
            Err(e) => tracing::warn!(rental = %r.id, error = %e, "metering failed"),
        }
    }
    let metered = running.len();
    for (r, m) in ended {
        let why = match m {
            Metered::Limit { cap, .. } => cap.as_str(),
            _ => "insufficient credit",
        };
        tracing::info!(rental = %r.id, reason = why, "terminating");
        rs.try_terminate(r).await;
    }
    Ok(MeterRound {
        metered,
        next_limit_at,
    })
}

/// The orphan sweep: every instance with a spotd label either belongs to a live rental
/// or is terminated. Also adopts instances of provisioning rentals whose create call
/// answered with an error although the instance was made.
pub async fn reconcile_once(rs: &Rentals) -> usize {
    let mut terminated = 0;
    for name in rs.registry.names() {
        let Some(provider) = rs.registry.get(&name) else {
            continue;
        };
        let list = match provider.list_instances().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(provider = %name, error = %e, "reconcile: cannot list instances");
                continue;
            }
        };
        for inst in list {
            // Interrupted and failed instances may still exist (a stopped Vast bid, an
            // exited pod: they keep costing storage): those are destroyed too.
            if !is_spotd_label(&inst.label)
                || matches!(
                    inst.state,
                    InstanceState::Terminated | InstanceState::Terminating
                )
            {
                continue;
            }
            let label = inst.label.clone();
            let rental = rs.store.read(move |rx| rx.rental(&label)).await;
            let live = match rental {
                // Live on any provider entry: two entries may share one cloud account.
                Ok(Some(r)) => !r.state.is_terminal(),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile: cannot read rental");
                    continue;
                }
            };
            if !live {
                tracing::info!(provider = %name, instance = %inst.id, label = %inst.label,
                    "terminating an instance no live rental owns");
                match provider.terminate(&inst.id).await {
                    Ok(_) => terminated += 1,
                    Err(e) => {
                        tracing::warn!(instance = %inst.id, error = %e, "orphan terminate failed")
                    }
                }
            }
        }
    }
    terminated
}

/// How often the rental workers run: sync, metering (from `RentalsConfig`) and the
/// orphan sweep.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    pub sync: Duration,
    pub sweep: Duration,
}

/// Runs the rental workers until shutdown: sync every `cadence.sync`, metering every
/// `metering_interval_seconds`, the orphan sweep at start and every `cadence.sweep`,
/// all asleep on the rentals' clock (a manual clock runs exactly the rounds due).
/// The ticker is registered when this is called, so a manual clock waits for the
/// start-up rounds from then on.
pub fn run(
    rs: Rentals,
    cadence: Cadence,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let ticker = rs.clock.ticker(Signal::new("rentals"));
    run_loop(rs, cadence, ticker, shutdown)
}

async fn run_loop(rs: Rentals, cadence: Cadence, mut ticker: Ticker, shutdown: CancellationToken) {
    let swept = reconcile_once(&rs).await;
    if swept > 0 {
        tracing::info!(
            count = swept,
            "start-up reconcile terminated orphan instances"
        );
    }
    sync_once(&rs).await;
    // Time the daemon was down is billed now: the GPUs kept running.
    let mut next_limit = match meter_round(&rs).await {
        Ok(r) => r.next_limit_at,
        Err(e) => {
            tracing::warn!(error = %e, "start-up metering failed");
            None
        }
    };
    let ms = |d: Duration| (d.as_millis() as i64).max(1);
    let (sync_ms, sweep_ms) = (ms(cadence.sync), ms(cadence.sweep));
    let meter_ms = rs.cfg.metering_interval_seconds.max(1) as i64 * 1000;
    let start = ticker.now();
    let (mut next_sync, mut next_meter, mut next_sweep) =
        (start + sync_ms, start + meter_ms, start + sweep_ms);
    loop {
        // A wall clock stepped back (NTP) must not push the next rounds an hour away:
        // no deadline is ever more than its interval from now.
        let now = ticker.now();
        next_sync = next_sync.min(now + sync_ms);
        next_meter = next_meter.min(now + meter_ms);
        next_sweep = next_sweep.min(now + sweep_ms);
        // A spend guard's second comes before the next regular round: meter then too.
        let limit = next_limit.filter(|l| *l < next_meter);
        let due = next_sync
            .min(next_meter)
            .min(next_sweep)
            .min(limit.unwrap_or(Millis::MAX));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.sleep_until(due) => {}
        }
        let now = ticker.now();
        // In a fixed order, so a manual clock replays the same interleaving.
        if now >= next_sync {
            sync_once(&rs).await;
            next_sync = later(next_sync, sync_ms, now);
        }
        let limit_due = limit.is_some_and(|l| now >= l);
        if now >= next_meter || limit_due {
            match meter_round(&rs).await {
                Ok(r) => {
                    tracing::debug!(rentals = r.metered, "metering round");
                    next_limit = r.next_limit_at;
                }
                Err(e) => tracing::warn!(error = %e, "metering round failed"),
            }
            if now >= next_meter {
                next_meter = later(next_meter, meter_ms, now);
            }
        }
        if now >= next_sweep {
            reconcile_once(&rs).await;
            next_sweep = later(next_sweep, sweep_ms, now);
        }
    }
}

/// The next deadline after `now` on a grid of `every` from `prev` (rounds missed while
/// a round ran long are skipped, not run back to back).
fn later(prev: Millis, every: Millis, now: Millis) -> Millis {
    if now < prev + every {
        return prev + every;
    }
    now + every - (now - prev) % every
}

// A sibling file rather than src/workers/rentals/, as workers/ keeps one file per worker.
#[cfg(test)]
#[path = "rentals_tests.rs"]
mod rentals_tests;
