//! The money rules (SPEC section 4) as functions over one store transaction.
//!
//! Every movement of money is a ledger entry written in the same transaction as the
//! account (and rental) it changes, so `balance == sum(credit and charge amounts)` and
//! `held == sum over rentals of Rental::held()` hold after every commit. Charges
//! consume a rental's hold first, then `available`; nothing here lets `available`
//! drop below zero: a rental charge that cannot be covered is refused, and a hosted
//! request's charge (`charge_request`, for work already done) is capped at what is
//! available and says how much it charged.

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::guards::{self, Cap};
use crate::ids;
use crate::model::{Account, LedgerEntry, LedgerKind, Rental};
use crate::money::{prorate, Usd};
use crate::store::Tx;

pub(crate) mod fold;

/// What a ledger entry points at.
#[derive(Clone, Debug, Default)]
pub(crate) struct Refs<'a> {
    pub rental_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub note: Option<String>,
}

/// Appends one entry to `account`'s ledger and updates its cached balance. The caller
/// writes the account (and rental) back in the same transaction.
pub(crate) fn append(
    tx: &Tx<'_>,
    account: &mut Account,
    kind: LedgerKind,
    amount: Usd,
    refs: Refs<'_>,
    now: Millis,
) -> Result<LedgerEntry> {
    if matches!(kind, LedgerKind::Credit | LedgerKind::Charge) {
        account.balance = account
            .balance
            .checked_add(amount)
            .ok_or_else(|| Error::invalid("amount out of range"))?;
    }
    if kind == LedgerKind::Charge {
        // The month's running figure moves with every charge, in this transaction.
        guards::record_charge(account, -amount, now);
    }
    if kind == LedgerKind::Credit {
        // The daemon's running credit total (every account's credits) must stay
        // countable too: checked before anything is written, so an amount that would
        // overflow it is the client's 400, not a failed write.
        let total = tx
            .totals()?
            .into_iter()
            .find_map(|(k, v)| (k == "credits").then_some(v))
            .unwrap_or(0);
        if total.checked_add(amount.0).is_none() {
            return Err(Error::invalid(
                "amount out of range: the daemon's total of credits would overflow",
            ));
        }
    }
    account.ledger_seq += 1;
    let e = LedgerEntry {
        id: ids::new_id("led"),
        account_id: account.id.clone(),
        seq: account.ledger_seq,
        at: now,
        kind,
        amount,
        rental_id: refs.rental_id.map(str::to_string),
        request_id: refs.request_id.map(str::to_string),
        note: refs.note,
        balance_after: account.balance,
    };
    tx.put_ledger(&e)?;
    Ok(e)
}

/// Adds credit (positive) or takes it back (negative, never below `held`).
pub fn credit(
    tx: &Tx<'_>,
    account: &mut Account,
    amount: Usd,
    note: Option<String>,
    now: Millis,
) -> Result<LedgerEntry> {
    if amount == Usd::ZERO {
        return Err(Error::invalid_param("amount", "amount must not be zero"));
    }
    if amount.is_negative() && account.available() + amount < Usd::ZERO {
        return Err(Error::InsufficientCredit(format!(
            "cannot remove {} USD: only {} USD is available",
            -amount,
            account.available()
        )));
    }
    append(
        tx,
        account,
        LedgerKind::Credit,
        amount,
        Refs {
            note,
            ..Refs::default()
        },
        now,
    )
}

/// Places the rental's hold (`rental.hold`), or refuses with `InsufficientCredit`.
pub fn place_hold(
    tx: &Tx<'_>,
    account: &mut Account,
    rental: &mut Rental,
    now: Millis,
) -> Result<()> {
    if rental.hold > account.available() {
        return Err(Error::InsufficientCredit(format!(
            "insufficient credit: this rental needs a hold of {} USD (the minimum session at {} USD/h) but only {} USD is available",
            rental.hold,
            rental.price_per_hour,
            account.available()
        )));
    }
    rental.hold_open = true;
    account.held += rental.held();
    append(
        tx,
        account,
        LedgerKind::Hold,
        -rental.hold,
        Refs {
            rental_id: Some(&rental.id),
            ..Refs::default()
        },
        now,
    )?;
    Ok(())
}

/// Releases what is left of the rental's hold.
pub fn release_hold(
    tx: &Tx<'_>,
    account: &mut Account,
    rental: &mut Rental,
    now: Millis,
) -> Result<()> {
    if !rental.hold_open {
        return Ok(());
    }
    let left = rental.held();
    rental.hold_open = false;
    account.held -= left;
    append(
        tx,
        account,
        LedgerKind::Release,
        left,
        Refs {
            rental_id: Some(&rental.id),
            ..Refs::default()
        },
        now,
    )?;
    Ok(())
}

/// Charges `amount` to the rental (negative: a refund), consuming its hold first.
/// Refuses a charge that `held + available` cannot cover.
pub fn charge_rental(
    tx: &Tx<'_>,
    account: &mut Account,
    rental: &mut Rental,
    amount: Usd,
    note: Option<String>,
    now: Millis,
) -> Result<()> {
    if amount == Usd::ZERO {
        return Ok(());
    }
    if amount > rental.held() + account.available() {
        return Err(Error::InsufficientCredit(format!(
            "a charge of {amount} USD exceeds what is held and available"
        )));
    }
    let before = rental.held();
    rental.cost += amount;
    let after = rental.held();
    account.held = account.held - before + after;
    append(
        tx,
        account,
        LedgerKind::Charge,
        -amount,
        Refs {
            rental_id: Some(&rental.id),
            note,
            ..Refs::default()
        },
        now,
    )?;
    Ok(())
}

/// Charges a hosted inference request, capped at what is available and at what the
/// month's budget leaves (a request that already ran cannot be refused; `available`
/// still never goes below zero, nor does the month pass its cap). Answers what was
/// charged.
pub(crate) fn charge_request(
    tx: &Tx<'_>,
    account: &mut Account,
    amount: Usd,
    request_id: &str,
    note: String,
    now: Millis,
) -> Result<Usd> {
    let budget = guards::month_left(account, now).unwrap_or(amount);
    let charged = amount.min(account.available()).min(budget).max(Usd::ZERO);
    if charged == Usd::ZERO {
        return Ok(charged);
    }
    append(
        tx,
        account,
        LedgerKind::Charge,
        -charged,
        Refs {
            request_id: Some(request_id),
            note: Some(note),
            ..Refs::default()
        },
        now,
    )?;
    Ok(charged)
}

/// Whole seconds of billable use from `started_at` to `upto` (partial seconds free).
pub(crate) fn billable_seconds(started_at: Millis, upto: Millis) -> u64 {
    if upto <= started_at {
        0
    } else {
        ((upto - started_at) / 1000) as u64
    }
}

/// The outcome of metering a rental.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Metered {
    /// Charged in full; the next step is covered too.
    Ok,
    /// Charged what could be covered; the rental must end now (`insufficient_credit`).
    OutOfCredit,
    /// A spend guard stopped billing at `at` (the last whole second its `max_cost` or
    /// the month's budget allows): the rental must end, billed to then and no further.
    Limit { cap: Cap, at: Millis },
}

/// Brings `rental.cost` up to what is due at `upto`: cumulative `prorate` minus what
/// was charged already, but never past the second a spend guard stops it at
/// (`guards::billable`: then it answers `Limit`). With `next_step_seconds`, also checks
/// that the next metering step will be coverable and answers `OutOfCredit` when it will
/// not, so the rental ends before `available` could go below zero.
pub(crate) fn meter(
    tx: &Tx<'_>,
    account: &mut Account,
    rental: &mut Rental,
    upto: Millis,
    next_step_seconds: Option<u64>,
    now: Millis,
) -> Result<Metered> {
    let Some(started) = rental.started_at else {
        return Ok(Metered::Ok);
    };
    let (secs, stop) = guards::billable(account, rental, billable_seconds(started, upto), now);
    let due = prorate(rental.price_per_hour, secs);
    let step = due - rental.cost;
    let cover = rental.held() + account.available();
    // Billing is cumulative (each step brings the cost up to `prorate(secs)`), so the
    // note names the running total of seconds, said as such: a step's own seconds
    // are the difference to the previous note.
    let note = Some(if step.is_negative() {
        format!(
            "refund: billed past the end; {secs} s of use in all at {} USD/h",
            rental.price_per_hour
        )
    } else {
        format!("{secs} s of use in all at {} USD/h", rental.price_per_hour)
    });
    if step > cover {
        charge_rental(tx, account, rental, cover, note, now)?;
        return Ok(Metered::OutOfCredit);
    }
    charge_rental(tx, account, rental, step, note, now)?;
    if let Some(cap) = stop {
        let at =
            started.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000));
        return Ok(Metered::Limit { cap, at });
    }
    if let Some(n) = next_step_seconds {
        let next = prorate(rental.price_per_hour, secs + n) - due;
        if next > rental.held() + account.available() {
            return Ok(Metered::OutOfCredit);
        }
    }
    Ok(Metered::Ok)
}

/// `price_per_hour * min_session_seconds`: the hold a rent or cold start places.
pub(crate) fn hold_for(price_per_hour: Usd, min_session_seconds: u64) -> Usd {
    prorate(price_per_hour, min_session_seconds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Offer, RentalState};
    use crate::store::{Store, StoreError};

    pub(crate) fn offer(price: Usd) -> Offer {
        Offer {
            id: "sim:o1".into(),
            provider: "sim".into(),
            native_id: "o1".into(),
            gpu: "H100 SXM".into(),
            gpu_count: 1,
            vram_gb: 80,
            vcpus: 16,
            ram_gb: 128,
            disk_gb: 500,
            region: "us-east".into(),
            price_per_hour: price,
            on_demand_price_per_hour: None,
            interruptible: true,
            reliability: 0.99,
            available: 1,
            updated_at: 0,
        }
    }

    pub(crate) fn rental(price: Usd, hold: Usd) -> Rental {
        Rental {
            state: RentalState::Running,
            started_at: Some(0),
            ..Rental::intent("rnt_t".into(), "acct_t".into(), offer(price), hold, 0)
        }
    }

    fn account(balance: Usd) -> Account {
        Account::new("acct_t".into(), "t".into(), 0).with_credit(balance)
    }

    impl Account {
        fn with_credit(mut self, b: Usd) -> Account {
            self.balance = b;
            self
        }
    }

    async fn in_tx<R: Send + 'static>(
        f: impl FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    ) -> (Store, R, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("l.redb")).unwrap();
        let r = store.write(f).await.unwrap();
        (store, r, dir)
    }

    fn ledger_sum(store: &Store) -> Usd {
        store
            .read_blocking(|rx| {
                Ok::<_, StoreError>(
                    rx.ledger("acct_t", None, 10_000)?
                        .iter()
                        .filter(|e| matches!(e.kind, LedgerKind::Credit | LedgerKind::Charge))
                        .map(|e| e.amount)
                        .sum(),
                )
            })
            .unwrap()
    }

    #[tokio::test]
    async fn hold_charge_release_keep_the_invariants() {
        // $3.60/h = $0.001/s; hold 600 s = $0.60; balance $1.
        let (store, (a, r), _d) = in_tx(|tx| {
            let mut a = account(Usd::ZERO);
            credit(tx, &mut a, Usd(1_000_000), None, 0)?;
            let mut r = rental(Usd(3_600_000), hold_for(Usd(3_600_000), 600));
            place_hold(tx, &mut a, &mut r, 0)?;
            assert_eq!(a.held, Usd(600_000));
            assert_eq!(a.available(), Usd(400_000));
            // 100 s: $0.10 comes out of the hold; available unchanged.
            assert_eq!(
                meter(tx, &mut a, &mut r, 100_000, Some(10), 0)?,
                Metered::Ok
            );
            assert_eq!(r.cost, Usd(100_000));
            assert_eq!(a.held, Usd(500_000));
            assert_eq!(a.available(), Usd(400_000));
            // 900 s: past the hold, the rest comes from available.
            assert_eq!(
                meter(tx, &mut a, &mut r, 900_000, Some(10), 0)?,
                Metered::Ok
            );
            assert_eq!(r.cost, Usd(900_000));
            assert_eq!(a.held, Usd::ZERO);
            assert_eq!(a.available(), Usd(100_000));
            release_hold(tx, &mut a, &mut r, 0)?;
            Ok((a, r))
        })
        .await;
        assert_eq!(a.balance, Usd(100_000));
        assert_eq!(a.held, Usd::ZERO);
        assert_eq!(r.cost, Usd(900_000));
        assert_eq!(ledger_sum(&store), a.balance);
    }

    #[tokio::test]
    async fn metering_stops_before_available_goes_negative() {
        let (store, (a, r, outcome), _d) = in_tx(|tx| {
            let mut a = account(Usd::ZERO);
            credit(tx, &mut a, Usd(700_000), None, 0)?;
            let mut r = rental(Usd(3_600_000), Usd(600_000));
            place_hold(tx, &mut a, &mut r, 0)?;
            // At 690 s, $0.69 is due of $0.70; the next 10 s step ($0.01) still fits.
            assert_eq!(
                meter(tx, &mut a, &mut r, 690_000, Some(10), 0)?,
                Metered::Ok
            );
            // At 695 s the next step (to 705 s) would not fit: stop now.
            let o = meter(tx, &mut a, &mut r, 695_000, Some(10), 0)?;
            Ok((a, r, o))
        })
        .await;
        assert_eq!(outcome, Metered::OutOfCredit);
        assert_eq!(r.cost, Usd(695_000));
        assert!(a.available() >= Usd::ZERO);
        assert_eq!(ledger_sum(&store), a.balance);
    }

    #[tokio::test]
    async fn downtime_catch_up_is_capped_at_what_is_there() {
        let (_s, (a, r, o), _d) = in_tx(|tx| {
            let mut a = account(Usd::ZERO);
            credit(tx, &mut a, Usd(700_000), None, 0)?;
            let mut r = rental(Usd(3_600_000), Usd(600_000));
            place_hold(tx, &mut a, &mut r, 0)?;
            // The daemon was down for an hour: $3.60 is due but only $0.70 exists.
            let o = meter(tx, &mut a, &mut r, 3_600_000, Some(10), 0)?;
            Ok((a, r, o))
        })
        .await;
        assert_eq!(o, Metered::OutOfCredit);
        assert_eq!(r.cost, Usd(700_000));
        assert_eq!(a.available(), Usd::ZERO);
        assert_eq!(a.balance, Usd::ZERO);
    }

    #[tokio::test]
    async fn hold_refused_without_funds_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("l.redb")).unwrap();
        let r = store
            .write(|tx| {
                let mut a = account(Usd(100_000));
                let mut r = rental(Usd(3_600_000), Usd(600_000));
                place_hold(tx, &mut a, &mut r, 0)
            })
            .await;
        assert!(matches!(r, Err(Error::InsufficientCredit(_))));
        assert_eq!(ledger_sum(&store), Usd::ZERO);
    }

    #[test]
    fn billable_seconds_floor() {
        assert_eq!(billable_seconds(1_000, 2_999), 1);
        assert_eq!(billable_seconds(5_000, 1_000), 0);
    }
}
