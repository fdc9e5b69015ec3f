//! `spotd simulate`: the whole daemon (store, workers, API over loopback, the sandbox
//! clouds and model servers) on a manual clock, driven through a seeded random workload
//! for days of simulated time, with provider faults, preemptions, crashes and restarts,
//! and its invariants checked after every step (see `check`). The first violation stops
//! the run with the seed and the step, which replay it.
//!
//! What is random comes from the seed: the workload's choices and the sandbox's prices
//! and preemptions. What is not: ids (random per process) and wall time. The same seed
//! therefore gives the same summary, wall time aside.

mod check;
mod workload;
mod world;

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use crate::clock::{Clock, Millis};
use check::{Checker, Seen};
use workload::Workload;
use world::Node;

/// Where the simulated month starts: 2026-12-01T00:00:00Z.
const T0: Millis = 1_796_083_200_000;
const DAY_MS: Millis = 86_400_000;

/// A defect the simulator can be asked to inject, to show its checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// An account's balance moves without a ledger entry (a charge lost).
    SkipCharge,
    /// An ended rental is charged one micro-dollar more than its seconds cost.
    Rounding,
    /// An ended rental's hold is never released.
    LoseRelease,
    /// An instance labelled like a rental runs with no rental, and the sweep is off.
    Orphan,
    /// A hosted request's charge loses the id of the request it bills.
    UnnamedCharge,
    /// A hosted request is charged less than its usage costs.
    Undercharge,
    /// An acknowledged rental is gone after a crash.
    LoseAck,
    /// The running totals `/metrics` reads drift from what they count.
    StaleTotals,
    /// A charge takes an account past its `max_usd_per_month`.
    PassCap,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub days: u64,
    /// Extra simulated hours (short runs in tests).
    pub hours: u64,
    pub seed: u64,
    /// Inject this defect (from step `inject_after` on) and expect a violation.
    pub inject: Option<Fault>,
    pub inject_after: u64,
    /// Print each step's action to stderr.
    pub verbose: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub days: u64,
    pub seed: u64,
    pub steps: u64,
    pub checks: u64,
    pub violations: u64,
    pub accounts: u64,
    pub rentals: u64,
    pub charges: u64,
    pub hosted_requests: u64,
    pub cold_starts: u64,
    pub preemptions: u64,
    /// Rentals a spend guard ended (`max_cost`, `budget_exceeded`).
    pub guard_ends: u64,
    pub provider_faults: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub wall_seconds: f64,
    /// The first violation: the step and what was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
}

/// The daemon's config in the simulation: coarse worker cadences so a month is a few
/// hundred thousand rounds, fast limits, preemptions on.
fn config(seed: u64) -> String {
    format!(
        r#"
[limits]
requests_per_second = 1000000
burst = 1000000
max_active_rentals_per_account = 4

[billing]
metering_interval_seconds = 300
min_session_seconds = 600

[deployments]
idle_timeout_seconds = 900
provision_timeout_seconds = 900
upstream_timeout_seconds = 60

[sandbox]
provision_seconds = 90
model_load_seconds = 120
preemptions_per_hour = 0.05
price_drift = 0.02
seed = {seed}
refresh_seconds = 900
"#
    )
}

/// Rental sync every minute, the orphan sweep every five.
const CADENCE: (u64, u64) = (60, 300);

/// Runs the simulation. `Err` only when it could not run at all; a violation is in the
/// summary.
pub async fn run(opts: &Options) -> Result<Summary, String> {
    let wall = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let clock = Clock::manual(T0);
    let cadence = match opts.inject {
        // The orphan fault is "the sweep is broken": it never runs.
        Some(Fault::Orphan) => (CADENCE.0, 100 * 365 * 86_400),
        _ => CADENCE,
    };
    let mut node = Node::start(dir.path(), &config(opts.seed), clock.clone(), cadence).await?;
    let mut work = Workload::new(opts.seed, opts.verbose);
    let mut checker = Checker::default();
    let mut summary = Summary {
        days: opts.days,
        seed: opts.seed,
        ..Summary::default()
    };
    let end = T0 + opts.days as Millis * DAY_MS + opts.hours as Millis * 3_600_000;
    let mut next_audit = T0 + DAY_MS;
    // What the daemon promises: an orphan is gone within a sweep (plus two syncs).
    let grace = ((CADENCE.1 + 2 * CADENCE.0) * 1000) as Millis;
    let result: Result<(), String> = async {
        let mut step = 0u64;
        while clock.now() < end {
            step += 1;
            summary.steps = step;
            let inject = opts.inject.filter(|_| step > opts.inject_after);
            let ctx = |e: String| {
                format!(
                    "seed {} step {step} ({}): {e}",
                    opts.seed,
                    crate::clock::rfc3339(clock.now())
                )
            };
            let restarted = work
                .step(&mut node, &mut summary, &mut checker, inject)
                .await
                .map_err(ctx)?;
            let Some(store) = node.store().cloned() else {
                continue;
            };
            if restarted {
                work.verify_acknowledged(&store).await.map_err(ctx)?;
                checker.audit(&store).await.map_err(ctx)?;
            }
            checker.step(&store, clock.now()).await.map_err(ctx)?;
            let seen = list_instances(&node).await.map_err(ctx)?;
            let down: HashSet<String> = work.down_clouds();
            checker
                .instances(&store, &seen, &down, clock.now(), grace)
                .await
                .map_err(ctx)?;
            if clock.now() >= next_audit {
                checker.audit(&store).await.map_err(ctx)?;
                next_audit += DAY_MS;
            }
        }
        // A crash near the end leaves the node down: it starts again, as after any
        // crash, and what it acknowledged and its books are audited.
        if !node.is_up() {
            node.restart().await?;
            let store = node.store().cloned().ok_or("the node did not start")?;
            work.verify_acknowledged(&store).await?;
        }
        let store = node.store().cloned().ok_or("the node is down at the end")?;
        checker
            .audit(&store)
            .await
            .map_err(|e| format!("seed {} final audit: {e}", opts.seed))?;
        Ok(())
    }
    .await;
    if let Err(v) = result {
        summary.violations = 1;
        summary.violation = Some(v);
    }
    if let Some(store) = node.store().cloned() {
        let (rentals, accounts) = store
            .read(|rx| Ok::<_, crate::store::StoreError>((rx.rentals()?, rx.accounts()?)))
            .await
            .map_err(|e| e.to_string())?;
        summary.rentals = rentals.len() as u64;
        summary.accounts = accounts.len() as u64;
        summary.cold_starts = rentals.iter().filter(|r| r.model.is_some()).count() as u64;
        summary.preemptions = rentals
            .iter()
            .filter(|r| r.termination_reason == Some(crate::model::TerminationReason::Preempted))
            .count() as u64;
        summary.guard_ends = rentals
            .iter()
            .filter(|r| {
                matches!(
                    r.termination_reason,
                    Some(
                        crate::model::TerminationReason::MaxCost
                            | crate::model::TerminationReason::BudgetExceeded
                    )
                )
            })
            .count() as u64;
    }
    summary.checks = checker.checks;
    summary.charges = checker.charges;
    let _ = node.stop().await;
    summary.wall_seconds = (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    Ok(summary)
}

/// Every instance of every sandbox cloud.
async fn list_instances(node: &Node) -> Result<Vec<Seen>, String> {
    let mut out = Vec::new();
    for cloud in crate::sandbox::cloud_names() {
        let r = node
            .cloud(hyper::Method::GET, &format!("/{cloud}/instances"), None)
            .await?;
        if r.status != 200 {
            // A cloud the workload took down answers 503: nothing to see there.
            continue;
        }
        for i in r.body["instances"].as_array().into_iter().flatten() {
            let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
            out.push(Seen {
                cloud: cloud.to_string(),
                id: s("id"),
                label: s("label"),
                state: s("state"),
            });
        }
    }
    Ok(out)
}

/// The human summary.
pub fn describe(s: &Summary) -> String {
    let mut out = format!(
        "simulated {} day(s), seed {}: {} steps, {} checks, {} violation(s)\n\
         accounts {}, rentals {}, charges {}, hosted requests {}, cold starts {}, \
         preemptions {}, ended by a spend guard {}, provider faults {}, crashes {}, \
         graceful restarts {}\n\
         wall time {:.1} s",
        s.days,
        s.seed,
        s.steps,
        s.checks,
        s.violations,
        s.accounts,
        s.rentals,
        s.charges,
        s.hosted_requests,
        s.cold_starts,
        s.preemptions,
        s.guard_ends,
        s.provider_faults,
        s.crashes,
        s.restarts,
        s.wall_seconds
    );
    if let Some(v) = &s.violation {
        out.push_str(&format!(
            "\nVIOLATION: {v}\nreplay: spotd simulate --days {} --seed {}",
            s.days, s.seed
        ));
    }
    out
}
