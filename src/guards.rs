//! Spend guards (SPEC section 6): the caps an operator sets on an account
//! (`max_usd_per_hour`, `max_usd_per_month`) and the one a rental carries (`max_cost`),
//! as pure functions of the records plus checks run inside the store transaction that
//! moves the money they guard. Nothing here reads history: the hourly figure is a sum
//! over the account's live rentals (an index), the monthly one is the running
//! `month_spent` kept with every charge (`record_charge`, called by `ledger::append`).
//!
//! How they bite:
//! - a rent, a cold start, or a provisioning rental moving to another offer is refused
//!   (`check_rent`) when the hourly sum of its live rentals would pass
//!   `max_usd_per_hour`, or when this month's charges plus what is held plus the new
//!   hold would pass `max_usd_per_month`;
//! - billing (`billable`, used by `ledger::meter`) stops at the last whole second that
//!   the rental's `max_cost` and the month's budget allow, and the rental is torn down
//!   (`max_cost` / `budget_exceeded`) with its `ended_at` at that second;
//! - a hosted request is admitted only within what the budget leaves (`hosted_left`),
//!   and its charge never takes the month past the cap (`month_left`).

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::model::{Account, Rental};
use crate::money::{prorate, Usd};
use crate::store::Tx;

/// Which guard refused or ended something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    PerHour,
    PerMonth,
    MaxCost,
}

impl Cap {
    /// The field that sets it, as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cap::PerHour => "max_usd_per_hour",
            Cap::PerMonth => "max_usd_per_month",
            Cap::MaxCost => "max_cost",
        }
    }

    /// The termination reason of a rental this guard ended (the hourly cap only
    /// refuses, it never ends anything).
    pub(crate) fn reason(self) -> crate::model::TerminationReason {
        match self {
            Cap::MaxCost => crate::model::TerminationReason::MaxCost,
            Cap::PerHour | Cap::PerMonth => crate::model::TerminationReason::BudgetExceeded,
        }
    }
}

/// What a guard did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Refused a rent, a cold start (a rental moving offers too) or a hosted request.
    Refused,
    /// Ended a running rental (`max_cost`, `budget_exceeded`).
    Ended,
}

/// The one place a spend guard reports that it refused or ended something, called in
/// the transaction that made the decision: `which` cap, on `account`, the rental
/// concerned if any, with `detail` (the client's message, or what was ended and why)
/// for the log. That transaction always commits (a refusal is handed back as a value
/// and turned into the 402 after it), so what is written here is durable with the
/// decision: the `account.spend_limit` webhook event (SPEC section 8), in the outbox.
pub(crate) fn limit_hit(
    tx: &Tx<'_>,
    account: &Account,
    which: Cap,
    action: Action,
    rental: Option<&Rental>,
    detail: &str,
    now: Millis,
) -> Result<()> {
    tracing::info!(account = %account.id, cap = which.as_str(), ?action, detail, "spend limit");
    let action = match action {
        Action::Refused => "refused",
        Action::Ended => "ended",
    };
    crate::webhooks::events::record_spend_limit(tx, account, which.as_str(), action, rental, now)?;
    Ok(())
}

/// The UTC calendar month that contains `t`, as `year * 12 + month - 1` (so months
/// compare in order; 0 stands for "never").
pub(crate) fn month_of(t: Millis) -> u32 {
    match time::OffsetDateTime::from_unix_timestamp(t.div_euclid(1000)) {
        Ok(d) => (d.year().max(0) as u32) * 12 + u32::from(u8::from(d.month())) - 1,
        Err(_) => 0,
    }
}

/// Charges made since 00:00 UTC on the 1st of `now`'s month: O(1), from the running
/// figure (zero once the month it counted is over).
pub fn spent_this_month(a: &Account, now: Millis) -> Usd {
    spent_in(a.spend_month, a.month_spent, now)
}

/// [`spent_this_month`] from the two fields that keep it (an account's, or the
/// in-memory copy hosted admission reads).
pub(crate) fn spent_in(spend_month: u32, month_spent: Usd, now: Millis) -> Usd {
    if spend_month == month_of(now) {
        month_spent
    } else {
        Usd::ZERO
    }
}

/// Adds a charge of `charged` (positive; a refund is negative) made at `at` to the
/// account's running month figure, starting it afresh when a new month began. Called
/// for every charge entry, in the transaction that writes it. A charge stamped in an
/// earlier month than the figure's (a wall clock stepped back) counts in the figure's
/// month rather than wiping it.
pub(crate) fn record_charge(a: &mut Account, charged: Usd, at: Millis) {
    let m = month_of(at);
    if m > a.spend_month {
        a.spend_month = m;
        a.month_spent = Usd::ZERO;
    }
    a.month_spent += charged;
}

/// What this month's budget still allows to be charged (`None`: no monthly cap).
/// Negative when the cap was lowered below what was already spent.
pub(crate) fn month_left(a: &Account, now: Millis) -> Option<Usd> {
    a.max_usd_per_month
        .map(|cap| cap - spent_this_month(a, now))
}

/// What the budget leaves a hosted request: the month's remainder less what is held
/// for live rentals, whose minimum sessions are already promised (as at rent). `None`:
/// no monthly cap. From the in-memory balance admission reads.
pub(crate) fn hosted_left(b: &crate::store::Balance, now: Millis) -> Option<Usd> {
    b.max_usd_per_month
        .map(|cap| cap - spent_in(b.spend_month, b.month_spent, now) - b.held)
}

/// The most whole seconds at `per_hour` whose cost (`prorate`, rounded half up) is at
/// most `amount`; 0 when even one second is over it, `u64::MAX` when time is free.
pub(crate) fn seconds_within(per_hour: Usd, amount: Usd) -> u64 {
    if per_hour <= Usd::ZERO {
        return u64::MAX;
    }
    if amount < Usd::ZERO {
        return 0;
    }
    // prorate(p, s) = floor((p*s + 1800) / 3600) <= X  <=>  p*s < 3600*X + 1800.
    let s = (3600 * i128::from(amount.0) + 1799) / i128::from(per_hour.0);
    u64::try_from(s).unwrap_or(u64::MAX)
}

/// Checks a rent or cold start at `price` per hour with `hold`, or a provisioning rental
/// (`moving`) re-pointed at such an offer, against the account's caps. Runs in the
/// transaction that places the hold, so two rents cannot both pass a cap. Answers the
/// refusal (already reported to [`limit_hit`]), for the caller to return once the
/// transaction commits, or `None`.
pub(crate) fn check_rent(
    tx: &Tx<'_>,
    a: &Account,
    price: Usd,
    hold: Usd,
    moving: Option<&Rental>,
    now: Millis,
) -> Result<Option<Error>> {
    let refused = |which: Cap, message: String| -> Result<Option<Error>> {
        limit_hit(tx, a, which, Action::Refused, moving, &message, now)?;
        Ok(Some(Error::SpendLimit(message)))
    };
    if let Some(cap) = a.max_usd_per_hour {
        // Live rentals: provisioning, running and terminating (the index holds exactly
        // the rentals not yet terminal).
        let live: Usd = tx
            .account_live_rentals(&a.id)?
            .iter()
            .filter(|r| moving.is_none_or(|m| m.id != r.id))
            .map(|r| r.price_per_hour)
            .sum();
        if live + price > cap {
            return refused(
                Cap::PerHour,
                format!(
                    "spend limit exceeded: max_usd_per_hour is {cap} USD/h and the account's live rentals cost {live} USD/h; one more at {price} USD/h would make {} USD/h",
                    live + price
                ),
            );
        }
    }
    if let Some(cap) = a.max_usd_per_month {
        let spent = spent_this_month(a, now);
        let held = a.held - moving.map(Rental::held).unwrap_or(Usd::ZERO);
        if spent + held + hold > cap {
            return refused(
                Cap::PerMonth,
                format!(
                    "spend limit exceeded: max_usd_per_month is {cap} USD and {spent} USD was spent this month with {held} USD held for live rentals; this rental's hold of {hold} USD would pass it"
                ),
            );
        }
    }
    Ok(None)
}

/// Where billing of `r` must stop, given `secs` billable seconds so far: the seconds
/// that may be billed and, when a guard stops it, which. A guard stops the rental once
/// it reaches the last whole second its `max_cost`, or what is left of the month's
/// budget, allows (the next second would pass it). Refunds and steps that charge
/// nothing are never cut, and billing is never cut below what was already charged.
pub(crate) fn billable(a: &Account, r: &Rental, secs: u64, now: Millis) -> (u64, Option<Cap>) {
    let price = r.price_per_hour;
    if prorate(price, secs) <= r.cost {
        return (secs, None);
    }
    match stop_second(a, r, now) {
        Some((s, cap)) if secs >= s => {
            let charged = seconds_within(price, r.cost);
            (s.max(charged).min(secs), Some(cap))
        }
        _ => (secs, None),
    }
}

/// The billable second at which a guard stops `r` if nothing else is charged meanwhile,
/// and which guard: the earlier of its `max_cost` and the month's budget.
fn stop_second(a: &Account, r: &Rental, now: Millis) -> Option<(u64, Cap)> {
    let price = r.price_per_hour;
    let by_cost = r.max_cost.map(|m| (seconds_within(price, m), Cap::MaxCost));
    let by_month = month_left(a, now).map(|left| {
        (
            seconds_within(price, r.cost + left.max(Usd::ZERO)),
            Cap::PerMonth,
        )
    });
    match (by_cost, by_month) {
        (Some(c), Some(m)) => Some(if m.0 < c.0 { m } else { c }),
        (c, m) => c.or(m),
    }
    .filter(|(s, _)| *s != u64::MAX)
}

/// The clock time at which a guard will stop the running rental `r` if nothing else is
/// charged meanwhile: the metering worker wakes then, so the GPU goes at that second
/// rather than at the next regular round.
pub(crate) fn deadline(a: &Account, r: &Rental, now: Millis) -> Option<Millis> {
    let started = r.started_at?;
    let (s, _) = stop_second(a, r, now)?;
    let ms = i64::try_from(s).ok()?.checked_mul(1000)?;
    started.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_within_is_the_last_second_whose_cost_fits() {
        for price in [1, 7, 999, 1_000_000, 2_170_000, 3_600_000, 98_765_432] {
            let p = Usd(price);
            for amount in [0, 1, 2, 499, 500, 1_000, 12_345, 1_000_000] {
                let a = Usd(amount);
                let s = seconds_within(p, a);
                assert!(prorate(p, s) <= a, "{price} {amount} {s}");
                assert!(prorate(p, s + 1) > a, "{price} {amount} {s}");
            }
        }
        assert_eq!(seconds_within(Usd::ZERO, Usd(5)), u64::MAX);
        assert_eq!(seconds_within(Usd(3_600_000), Usd(-1)), 0);
    }

    #[test]
    fn months_are_utc_calendar_months() {
        // 2026-12-01T00:00:00Z and the millisecond before it.
        let dec = 1_796_083_200_000;
        assert_eq!(month_of(dec), 2026 * 12 + 11);
        assert_eq!(month_of(dec - 1), 2026 * 12 + 10);
        // 2027-01-01T00:00:00Z.
        let jan = dec + 31 * 86_400_000;
        assert_eq!(month_of(jan - 1), 2026 * 12 + 11);
        assert_eq!(month_of(jan), 2027 * 12);
    }

    #[test]
    fn the_month_figure_rolls_over_and_survives_a_clock_stepped_back() {
        let dec = 1_796_083_200_000;
        let jan = dec + 31 * 86_400_000;
        let mut a = Account::new("a".into(), "a".into(), 0);
        record_charge(&mut a, Usd(5), dec + 10);
        record_charge(&mut a, Usd(7), dec + 20);
        assert_eq!(spent_this_month(&a, dec + 30), Usd(12));
        assert_eq!(spent_this_month(&a, jan), Usd::ZERO, "read in a new month");
        record_charge(&mut a, Usd(3), jan + 1);
        assert_eq!(spent_this_month(&a, jan + 2), Usd(3));
        // A charge stamped in December after January's began counts in January.
        record_charge(&mut a, Usd(1), jan - 5);
        assert_eq!(spent_this_month(&a, jan + 2), Usd(4));
    }

    #[test]
    fn billing_stops_at_the_earlier_guard_and_never_below_what_was_charged() {
        // $3.60/h: 1000 micro-USD a second.
        let mut r = crate::ledger::tests::rental(Usd(3_600_000), Usd::ZERO);
        let mut a = Account::new("acct_t".into(), "t".into(), 0);
        assert_eq!(billable(&a, &r, 500, 0), (500, None));
        r.max_cost = Some(Usd(250_500));
        assert_eq!(billable(&a, &r, 249, 0), (249, None));
        assert_eq!(billable(&a, &r, 250, 0), (250, Some(Cap::MaxCost)));
        assert_eq!(billable(&a, &r, 900, 0), (250, Some(Cap::MaxCost)));
        // A month budget of $0.1 left (cap $1, $0.9 spent), 50 s already charged.
        a.max_usd_per_month = Some(Usd(1_000_000));
        record_charge(&mut a, Usd(900_000), 0);
        r.cost = Usd(50_000);
        assert_eq!(billable(&a, &r, 900, 0), (150, Some(Cap::PerMonth)));
        assert_eq!(deadline(&a, &r, 0), Some(150_000));
        // The cap lowered below what was spent: nothing more is billed, nothing refunded.
        a.max_usd_per_month = Some(Usd(100));
        assert_eq!(billable(&a, &r, 900, 0), (50, Some(Cap::PerMonth)));
        // A refund step is never cut.
        assert_eq!(billable(&a, &r, 10, 0), (10, None));
    }
}
