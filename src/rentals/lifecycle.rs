//! The rental state machine as transaction-level steps.
//!
//! Each function changes one rental (and its account's money) inside one store
//! transaction and refuses transitions SPEC section 3 does not allow. Provider calls
//! never happen here: callers do them before or after, never inside.

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::ledger::{self, Metered};
use crate::model::{Account, Rental, RentalState, TerminationReason};
use crate::providers::{Instance, InstanceState};
use crate::store::Tx;

/// Moves `r` to `next`, or answers a `Conflict` for a transition the state machine forbids.
pub fn transition(r: &mut Rental, next: RentalState, now: Millis) -> Result<()> {
    if r.state == next {
        return Ok(());
    }
    if !r.state.can_become(next) {
        return Err(Error::conflict(
            "invalid_state",
            format!(
                "rental {} is {} and cannot become {}",
                r.id,
                r.state.as_str(),
                next.as_str()
            ),
        ));
    }
    r.state = next;
    r.updated_at = now;
    Ok(())
}

/// Stops billing at `ended_at` with an exact final charge, releases the hold and ends
/// in `next` (terminating, failed or interrupted).
pub fn finish_billing(
    tx: &Tx<'_>,
    account: &mut Account,
    r: &mut Rental,
    ended_at: Millis,
    now: Millis,
) -> Result<()> {
    if r.ended_at.is_none() {
        let end = match r.started_at {
            Some(s) => ended_at.max(s),
            None => ended_at,
        };
        r.ended_at = Some(end);
        // Capped at what the account holds: the rental is ending either way. A
        // preemption noticed after a metering step charged past it comes out of
        // `meter` as a negative step: a refund. A spend guard that stopped billing
        // earlier moves the end back to its second: billing stopped there.
        if let Metered::Limit { at, .. } = ledger::meter(tx, account, r, end, None, now)? {
            r.ended_at = Some(at.min(end));
        }
    }
    ledger::release_hold(tx, account, r, now)
}

/// Teardown requested (by the user, a limit, the credit or an admin).
pub fn begin_teardown(
    tx: &Tx<'_>,
    account: &mut Account,
    r: &mut Rental,
    reason: crate::model::TerminationReason,
    now: Millis,
) -> Result<()> {
    if r.state == RentalState::Terminating {
        return Ok(());
    }
    if r.state.is_terminal() {
        return Err(Error::conflict(
            "already_terminated",
            format!("rental {} is already {}", r.id, r.state.as_str()),
        ));
    }
    transition(r, RentalState::Terminating, now)?;
    r.termination_reason = Some(reason);
    r.next_attempt_at = now;
    r.attempts = 0;
    finish_billing(tx, account, r, now, now)
}

/// The provider confirmed the instance is gone, reporting it as `inst` when it said
/// more than "not found". A teardown bills up to the moment it was asked for; when the
/// provider says the instance had already ended before that (a preemption spotd had
/// not noticed yet, or a crash of the daemon in between), the bill is cut back to that
/// moment (a refund step) and a preemption is recorded as the reason: no rental is
/// billed for a GPU that no longer existed.
pub fn confirm_gone(
    tx: &Tx<'_>,
    account: &mut Account,
    r: &mut Rental,
    inst: Option<&Instance>,
    now: Millis,
) -> Result<()> {
    let reported = inst
        .and_then(|i| i.ended_at.as_deref())
        .and_then(crate::clock::parse_rfc3339);
    if let (Some(end), Some(billed), Some(started)) = (reported, r.ended_at, r.started_at) {
        let end = end.max(started);
        if end < billed {
            r.ended_at = Some(end);
            let _: Metered = ledger::meter(tx, account, r, end, None, now)?;
            if inst.is_some_and(|i| i.state == InstanceState::Interrupted) {
                r.termination_reason = Some(TerminationReason::Preempted);
            }
        }
    }
    confirm_terminated(r, now)
}

/// The provider confirmed the instance is gone.
pub fn confirm_terminated(r: &mut Rental, now: Millis) -> Result<()> {
    transition(r, RentalState::Terminated, now)?;
    r.endpoint = None;
    r.ssh = None;
    r.last_error = None;
    Ok(())
}

/// Provisioning failed: nothing is charged, the hold is released.
pub fn fail(
    tx: &Tx<'_>,
    account: &mut Account,
    r: &mut Rental,
    reason: TerminationReason,
    message: Option<String>,
    now: Millis,
) -> Result<()> {
    transition(r, RentalState::Failed, now)?;
    r.termination_reason = Some(reason);
    r.last_error = message;
    r.started_at = None;
    finish_billing(tx, account, r, now, now)
}

/// The instance answered running: billing starts now.
pub fn mark_running(r: &mut Rental, inst: &Instance, now: Millis) -> Result<()> {
    transition(r, RentalState::Running, now)?;
    r.started_at = Some(now);
    r.seen_running_at = Some(now);
    r.last_activity_at = Some(now);
    r.endpoint = inst.endpoint.clone();
    r.ssh = inst.ssh.clone();
    r.attempts = 0;
    r.last_error = None;
    Ok(())
}

/// The provider took the GPU away (preemption) or lost it: billed up to `ended_at`.
pub fn interrupt(
    tx: &Tx<'_>,
    account: &mut Account,
    r: &mut Rental,
    reason: TerminationReason,
    ended_at: Millis,
    now: Millis,
) -> Result<()> {
    transition(r, RentalState::Interrupted, now)?;
    r.termination_reason = Some(reason);
    r.endpoint = None;
    r.ssh = None;
    finish_billing(tx, account, r, ended_at, now)
}
