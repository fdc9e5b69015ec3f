//! Older layouts of the records whose shape changed, and the [`Versioned`] impls that
//! read them into today's types. Each old layout is frozen here exactly as it was
//! stored: never edit one, add the next beside it.
//!
//! - [`Account`] version 2 added the spend guards (`max_usd_per_hour`,
//!   `max_usd_per_month`) and the month's running spend (`spend_month`, `month_spent`);
//!   version 1 is [`AccountV1`].
//! - [`Rental`] version 2 added `max_cost`; version 1 is [`RentalV1`].
//!   (`TerminationReason` gained `budget_exceeded` and `max_cost` at its end, which
//!   leaves every older variant's stored index as it was, so it needs no version.)

use std::collections::BTreeMap;

use serde::Deserialize;

use super::codec::{unknown_version, Body, Versioned};
use super::StoreError;
use crate::clock::Millis;
use crate::model::{Account, Offer, Rental, RentalState, Ssh, TerminationReason};
use crate::money::Usd;

/// An account as spotd 0.1.0 stored it (record version 1).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct AccountV1 {
    id: String,
    name: String,
    created_at: Millis,
    balance: Usd,
    held: Usd,
    ledger_seq: u64,
}

impl Versioned for Account {
    const VERSION: u8 = 2;

    fn migrate(version: u8, body: Body<'_>) -> Result<Account, StoreError> {
        match version {
            1 => {
                let o: AccountV1 = body.decode()?;
                Ok(Account {
                    balance: o.balance,
                    held: o.held,
                    ledger_seq: o.ledger_seq,
                    // No caps, and no running month figure: the first charge starts one.
                    // An account upgraded mid-month shows only what it was charged since.
                    ..Account::new(o.id, o.name, o.created_at)
                })
            }
            v => Err(unknown_version(v, Self::VERSION)),
        }
    }
}

/// A rental as spotd 0.1.0 stored it (record version 1).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct RentalV1 {
    id: String,
    account_id: String,
    state: RentalState,
    offer: Offer,
    provider: String,
    price_per_hour: Usd,
    model: Option<String>,
    name: Option<String>,
    image: Option<String>,
    ssh_public_key: Option<String>,
    env: BTreeMap<String, String>,
    instance_id: Option<String>,
    endpoint: Option<String>,
    ssh: Option<Ssh>,
    created_at: Millis,
    started_at: Option<Millis>,
    ended_at: Option<Millis>,
    last_activity_at: Option<Millis>,
    seen_running_at: Option<Millis>,
    termination_reason: Option<TerminationReason>,
    cost: Usd,
    hold: Usd,
    hold_open: bool,
    idle_timeout_seconds: Option<u64>,
    max_duration_seconds: Option<u64>,
    attempts: u32,
    next_attempt_at: Millis,
    last_error: Option<String>,
    updated_at: Millis,
}

impl From<RentalV1> for Rental {
    fn from(o: RentalV1) -> Rental {
        Rental {
            id: o.id,
            account_id: o.account_id,
            state: o.state,
            offer: o.offer,
            provider: o.provider,
            price_per_hour: o.price_per_hour,
            model: o.model,
            name: o.name,
            image: o.image,
            ssh_public_key: o.ssh_public_key,
            env: o.env,
            instance_id: o.instance_id,
            endpoint: o.endpoint,
            ssh: o.ssh,
            created_at: o.created_at,
            started_at: o.started_at,
            ended_at: o.ended_at,
            last_activity_at: o.last_activity_at,
            seen_running_at: o.seen_running_at,
            termination_reason: o.termination_reason,
            cost: o.cost,
            hold: o.hold,
            hold_open: o.hold_open,
            idle_timeout_seconds: o.idle_timeout_seconds,
            max_duration_seconds: o.max_duration_seconds,
            max_cost: None,
            attempts: o.attempts,
            next_attempt_at: o.next_attempt_at,
            last_error: o.last_error,
            updated_at: o.updated_at,
        }
    }
}

impl Versioned for Rental {
    const VERSION: u8 = 2;

    fn migrate(version: u8, body: Body<'_>) -> Result<Rental, StoreError> {
        match version {
            1 => body.decode::<RentalV1>().map(Rental::from),
            v => Err(unknown_version(v, Self::VERSION)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::{decode_versioned, encode, encode_versioned};

    fn v1_rental() -> RentalV1 {
        let r = crate::ledger::tests::rental(Usd(2_000_000), Usd(333_333));
        RentalV1 {
            id: r.id,
            account_id: r.account_id,
            state: RentalState::Terminated,
            offer: r.offer,
            provider: r.provider,
            price_per_hour: r.price_per_hour,
            model: Some("m".into()),
            name: Some("n".into()),
            image: None,
            ssh_public_key: None,
            env: [("A".to_string(), "b".to_string())].into(),
            instance_id: Some("i-1".into()),
            endpoint: None,
            ssh: None,
            created_at: 5,
            started_at: Some(6),
            ended_at: Some(9_000),
            last_activity_at: Some(7),
            seen_running_at: Some(8),
            termination_reason: Some(TerminationReason::Admin),
            cost: Usd(4_444),
            hold: Usd(333_333),
            hold_open: false,
            idle_timeout_seconds: Some(60),
            max_duration_seconds: None,
            attempts: 2,
            next_attempt_at: 10,
            last_error: Some("e".into()),
            updated_at: 11,
        }
    }

    #[test]
    fn version_1_records_read_as_today_s_with_no_guards() {
        let old = AccountV1 {
            id: "acct_1".into(),
            name: "a".into(),
            created_at: 3,
            balance: Usd(10),
            held: Usd(4),
            ledger_seq: 7,
        };
        let a: Account = decode_versioned(&encode(&old).unwrap()).unwrap();
        assert_eq!(
            a,
            Account {
                balance: Usd(10),
                held: Usd(4),
                ledger_seq: 7,
                ..Account::new("acct_1".into(), "a".into(), 3)
            }
        );
        let r: Rental = decode_versioned(&encode(&v1_rental()).unwrap()).unwrap();
        assert_eq!(r.max_cost, None);
        assert_eq!(r.cost, Usd(4_444));
        assert_eq!(r.termination_reason, Some(TerminationReason::Admin));
        assert_eq!(r.env.get("A").map(String::as_str), Some("b"));
    }

    #[test]
    fn today_s_records_round_trip_under_version_2_and_are_not_misread() {
        let a = Account {
            max_usd_per_hour: Some(Usd(1)),
            max_usd_per_month: Some(Usd(2)),
            spend_month: 24_323,
            month_spent: Usd(3),
            ..Account::new("acct_1".into(), "a".into(), 3)
        };
        let b = encode_versioned(&a).unwrap();
        assert_eq!(b[0], 2);
        assert_eq!(decode_versioned::<Account>(&b).unwrap(), a);
        // The new layout's bytes under the old version byte are refused, not misread.
        let mut relabelled = b;
        relabelled[0] = 1;
        assert!(decode_versioned::<Account>(&relabelled).is_err());

        let r = Rental {
            max_cost: Some(Usd(5)),
            termination_reason: Some(TerminationReason::MaxCost),
            ..Rental::from(v1_rental())
        };
        let b = encode_versioned(&r).unwrap();
        assert_eq!(b[0], 2);
        assert_eq!(decode_versioned::<Rental>(&b).unwrap(), r);
        let mut relabelled = b;
        relabelled[0] = 1;
        assert!(decode_versioned::<Rental>(&relabelled).is_err());
    }
}
