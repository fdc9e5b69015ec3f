//! Writing events into the outbox, inside the caller's transaction: one delivery row per
//! endpoint that asked for the type, none at all when no endpoint did.
//!
//! Every function here takes the [`Tx`] of the change it reports: the event commits
//! with that change or not at all. An operation that writes an event and then fails
//! rolls the event back with everything else it wrote (see `store::writer`), so a
//! refusal that must be reported has to *succeed* as a write (return `Ok` with the
//! refusal, and turn it into the error outside the transaction).

use serde_json::{json, Value};

use super::EventType;
use crate::clock::{rfc3339, Millis};
use crate::ids;
use crate::model::{Account, Delivery, DeliveryState, Rental, RentalState};
use crate::store::{StoreError, Tx};

/// Writes event `kind` about `stream` (a rental or account id: the events of one stream
/// reach an endpoint in the order they were written) with `data` (the object as the
/// API shows it) for every endpoint subscribed to it.
pub(crate) fn emit(
    tx: &Tx<'_>,
    kind: EventType,
    stream: &str,
    data: Value,
    now: Millis,
) -> Result<(), StoreError> {
    let hooks: Vec<_> = tx
        .webhooks()?
        .into_iter()
        .filter(|w| w.wants(kind.as_str()))
        .collect();
    if hooks.is_empty() {
        return Ok(());
    }
    let id = ids::new_id("evt");
    let body = json!({
        "id": id,
        "type": kind.as_str(),
        "timestamp": rfc3339(now),
        "data": data,
    })
    .to_string();
    for w in hooks {
        let seq = tx.next_delivery_seq()?;
        let d = Delivery {
            seq,
            webhook_id: w.id,
            event_id: id.clone(),
            event_type: kind.as_str().to_string(),
            stream: stream.to_string(),
            created_at: now,
            body: body.clone(),
            attempts: 0,
            last_status: None,
            last_error: None,
            last_attempt_at: None,
            first_attempt_at: None,
            next_attempt_at: None,
            state: DeliveryState::Pending,
            finished_at: None,
        };
        tx.enqueue_delivery(d, now)?;
    }
    Ok(())
}

/// The meta key that marks a deployment's readiness as reported.
fn ready_key(rental: &str) -> String {
    format!("deployment_ready:{rental}")
}

/// `deployment.ready`: the deployment `rental` is running and its model server
/// answered. Recorded once per deployment (a marker in the same transaction), however
/// many probes and restarts see it ready; nothing is recorded for a rental that is not
/// running any more. Answers whether this call recorded it.
pub(crate) fn record_deployment_ready(
    tx: &Tx<'_>,
    rental: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let key = ready_key(rental);
    if tx.meta::<Millis>(&key)?.is_some() {
        return Ok(false);
    }
    let Some(r) = tx.rental(rental)? else {
        return Ok(false);
    };
    if r.state != RentalState::Running || r.model.is_none() {
        return Ok(false);
    }
    tx.put_meta(&key, &now)?;
    emit(
        tx,
        EventType::DeploymentReady,
        &r.id,
        crate::api::views::rental(&r),
        now,
    )?;
    Ok(true)
}

/// `account.spend_limit`: a cap of SPEC section 6 (`cap`: `max_usd_per_hour`,
/// `max_usd_per_month` or `max_cost`) refused something (`action` "refused") or ended a
/// rental ("ended", with `rental`). For the spend guards to call in the transaction
/// that refuses or ends (see the module comment about refusals). `data` is the account
/// as the API shows it plus `spend_limit: {cap, action, rental_id}`; an event about a
/// rental is ordered with that rental's other events.
// Its caller is `guards::limit_hit`, the one place a guard reports.
pub(crate) fn record_spend_limit(
    tx: &Tx<'_>,
    account: &Account,
    cap: &str,
    action: &str,
    rental: Option<&Rental>,
    now: Millis,
) -> Result<(), StoreError> {
    let mut data = crate::api::views::account(account, now);
    data["spend_limit"] = json!({
        "cap": cap,
        "action": action,
        "rental_id": rental.map(|r| r.id.as_str()),
    });
    let stream = rental.map_or(account.id.as_str(), |r| r.id.as_str());
    emit(tx, EventType::SpendLimit, stream, data, now)
}
