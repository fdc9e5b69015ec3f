//! The spend guards (SPEC section 6) in the rental workers and the rent path, on the
//! same harness as `rentals_tests`: a manual clock, an in-memory provider, metering
//! every 10 s at $2.17/h (602.7 micro-USD a second, so a cap is never a whole number
//! of seconds by accident).

use super::*;
use crate::accounts::{set_limits, LimitsPatch};
use crate::error::Error;
use crate::guards::{seconds_within, spent_this_month};
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

impl Harness {
    async fn limits(&self, per_hour: Option<Usd>, per_month: Option<Usd>) {
        let patch = LimitsPatch {
            max_usd_per_hour: Some(per_hour),
            max_usd_per_month: Some(per_month),
        };
        set_limits(&self.store, &self.account, patch).await.unwrap();
    }
}

fn with_max_cost(c: Usd) -> RentRequest {
    RentRequest {
        max_cost: Some(c),
        ..rent_o1()
    }
}

/// The run loop meters every 10 s, yet a rental whose `max_cost` falls between two
/// rounds is torn down at that very second: the worker wakes at the guard's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_ends_a_rental_at_its_second_between_rounds() {
    let h = harness(CREDIT).await;
    // 25 s cost 15_069; 26 s would cost 15_671.
    let max = Usd(15_100);
    assert_eq!(seconds_within(PRICE, max), 25);
    let r = h.running_with(with_max_cost(max)).await;
    let started = r.started_at.unwrap();
    let stop = CancellationToken::new();
    let cadence = super::super::Cadence {
        sync: std::time::Duration::from_secs(60),
        sweep: std::time::Duration::from_secs(3600),
    };
    let task = tokio::spawn(super::super::run(h.rs.clone(), cadence, stop.clone()));
    h.clock.settle().await.unwrap();
    h.clock.advance_settled(40_000).await.unwrap();
    let r = h.rental(&r.id).await;
    assert_eq!(r.termination_reason, Some(TerminationReason::MaxCost));
    assert_eq!(
        r.ended_at,
        Some(started + 25_000),
        "billed to the 25th second"
    );
    assert_eq!(r.cost, prorate(PRICE, 25));
    assert!(r.cost <= max && prorate(PRICE, 26) > max);
    // Torn down at that second (the teardown's write), not at the round at 30 s.
    assert_eq!(r.state, RentalState::Terminated);
    assert_eq!(h.fake.terminated().len(), 1);
    let instance = h.fake.instances.lock().unwrap()[0].clone();
    assert_eq!(instance.ended_at, Some(rfc3339(started + 25_000)));
    stop.cancel();
    task.await.unwrap();
    h.books().await;
}

/// A teardown asked for after the rental passed its `max_cost` (between rounds, with no
/// worker to stop it) bills only up to the limit's second, and ends there.
#[tokio::test]
async fn a_late_teardown_never_bills_past_max_cost() {
    let h = harness(CREDIT).await;
    let max = Usd(15_100);
    let r = h.running_with(with_max_cost(max)).await;
    let started = r.started_at.unwrap();
    h.clock.advance(20_000);
    meter_once(&h.rs).await.unwrap();
    h.clock.advance(9_000);
    let r =
        h.rs.teardown(Some(&h.account), &r.id, TerminationReason::User)
            .await
            .unwrap();
    assert_eq!(r.cost, prorate(PRICE, 25));
    assert_eq!(r.ended_at, Some(started + 25_000));
    assert_eq!(r.termination_reason, Some(TerminationReason::User));
    h.books().await;
}

/// The monthly budget, shared by two rentals, ends them with `budget_exceeded` at the
/// second it is reached; the month never passes its cap.
#[tokio::test]
async fn the_monthly_budget_ends_running_rentals_at_the_cap() {
    let h = harness(CREDIT).await;
    // The holds (2 x 600 s = 0.7233 USD) fit; about 200 s more of the two do not.
    let cap = Usd(1_000_000);
    h.limits(None, Some(cap)).await;
    let a = h.running().await;
    let b = h.running().await;
    let mut rounds = 0;
    loop {
        let live = [h.rental(&a.id).await, h.rental(&b.id).await];
        if live.iter().all(|r| r.state != RentalState::Running) {
            break;
        }
        rounds += 1;
        assert!(rounds < 200, "the budget never stopped them");
        h.clock.advance(METER_STEP_S as i64 * 1000);
        meter_once(&h.rs).await.unwrap();
        let acct = h.books().await;
        assert!(spent_this_month(&acct, h.clock.now()) <= cap);
    }
    let acct = h.books().await;
    let spent = spent_this_month(&acct, h.clock.now());
    let (a, b) = (h.rental(&a.id).await, h.rental(&b.id).await);
    assert_eq!(spent, a.cost + b.cost, "the running figure is the charges");
    assert!(spent <= cap);
    // Exactly to the second: one more second of either would have passed the cap.
    assert!(spent + prorate(PRICE, 1) > cap, "spent {spent} of {cap}");
    for r in [&a, &b] {
        assert_eq!(
            r.termination_reason,
            Some(TerminationReason::BudgetExceeded)
        );
        let secs = crate::ledger::billable_seconds(r.started_at.unwrap(), r.ended_at.unwrap());
        assert_eq!(r.cost, prorate(PRICE, secs), "billed to its end exactly");
    }
    // Spent is above the holds: the metering, not the rent check, stopped them.
    assert!(spent > prorate(PRICE, 2 * MIN_SESSION_S));
}

/// Refused rents rent nothing: no provider call, no rental, no hold, no ledger entry.
#[tokio::test]
async fn caps_refuse_a_rent_before_anything_is_written_or_called() {
    let h = harness(CREDIT).await;
    h.running().await;
    let creates = h.fake.creates();
    let before = h.books().await;
    // One $2.17 rental is live; a second would make $4.34/h.
    h.limits(Some(Usd(4_000_000)), None).await;
    let e = h.rs.rent(&h.account, rent_o1()).await.unwrap_err();
    let Error::SpendLimit(m) = e else {
        panic!("{e:?}")
    };
    assert!(
        m.contains("max_usd_per_hour is 4 USD/h") && m.contains("2.17 USD/h"),
        "{m}"
    );
    // The month: spent 0 + held 0.3617 + a new hold of 0.3617 > 0.5.
    h.limits(None, Some(Usd(500_000))).await;
    let e = h.rs.rent(&h.account, rent_o1()).await.unwrap_err();
    let Error::SpendLimit(m) = e else {
        panic!("{e:?}")
    };
    assert!(m.contains("max_usd_per_month is 0.5 USD"), "{m}");
    assert_eq!(h.fake.creates(), creates, "the provider was never asked");
    let after = h.books().await;
    assert_eq!(
        (after.balance, after.held, after.ledger_seq),
        (before.balance, before.held, before.ledger_seq)
    );
    let id = h.account.clone();
    let n = h
        .store
        .read(move |rx| rx.account_rentals(&id))
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1, "no rental row for the refused rents");
    // Cleared, the same rent goes through.
    h.limits(None, None).await;
    h.rs.rent(&h.account, rent_o1()).await.unwrap();
}

/// Parallel rents against an hourly cap that admits exactly two: the check runs in the
/// write transaction, so no two rents see the same room under the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_rents_never_pass_the_hourly_cap_together() {
    let h = harness(CREDIT).await;
    h.limits(Some(Usd(2 * PRICE.0 + 1)), None).await;
    let rents = (0..8).map(|_| {
        let rs = h.rs.clone();
        let account = h.account.clone();
        tokio::spawn(async move { rs.rent(&account, rent_o1()).await })
    });
    let results = join_all(rents).await;
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(Error::SpendLimit(_)))))
        .count();
    assert_eq!((ok, refused), (2, 6), "{results:?}");
    assert_eq!(h.fake.creates(), 2);
    assert_eq!(
        h.books().await.held,
        Usd(prorate(PRICE, MIN_SESSION_S).0 * 2)
    );
}
