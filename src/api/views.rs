//! The JSON the API shows, built from stored records. Money is an exact JSON number
//! (`Usd::to_json`), times are RFC 3339 UTC.

use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::model::{Account, ApiKey, LedgerEntry, LedgerKind, Offer, Rental};
use crate::money::Usd;

fn opt_time(t: Option<i64>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

pub fn offer(o: &Offer) -> Value {
    json!({
        "id": o.id,
        "object": "gpu_offer",
        "provider": o.provider,
        "gpu": o.gpu,
        "gpu_count": o.gpu_count,
        "vram_gb": o.vram_gb,
        "vcpus": o.vcpus,
        "ram_gb": o.ram_gb,
        "disk_gb": o.disk_gb,
        "region": o.region,
        "price_per_hour": o.price_per_hour.to_json(),
        "price_per_gpu_hour": o.price_per_gpu_hour().to_json(),
        "on_demand_price_per_hour": o.on_demand_price_per_hour.map(|p| p.to_json()),
        "interruptible": o.interruptible,
        "reliability": o.reliability,
        "available": o.available,
        "updated_at": rfc3339(o.updated_at),
    })
}

pub fn rental(r: &Rental) -> Value {
    json!({
        "id": r.id,
        "object": "gpu_rental",
        "state": r.state.as_str(),
        "offer": offer(&r.offer),
        "provider": r.provider,
        "price_per_hour": r.price_per_hour.to_json(),
        "model": r.model,
        "name": r.name,
        "image": r.image,
        "endpoint": r.endpoint,
        "ssh": r.ssh.as_ref().map(|s| json!({"host": s.host, "port": s.port, "user": s.user})),
        "created_at": rfc3339(r.created_at),
        "started_at": opt_time(r.started_at),
        "ended_at": opt_time(r.ended_at),
        "last_activity_at": opt_time(r.last_activity_at),
        "termination_reason": r.termination_reason.map(|t| t.as_str()),
        "idle_timeout_seconds": r.idle_timeout_seconds,
        "max_duration_seconds": r.max_duration_seconds,
        "max_cost": r.max_cost.map(Usd::to_json),
        "cost": r.cost.to_json(),
        "hold": r.held().to_json(),
        "last_error": r.last_error,
    })
}

/// `balance` is the sum of the entries' `amount`s (SPEC section 4), so a hold or a
/// release, which moves money between `available` and `held` and leaves the balance
/// alone, shows `amount` 0 and its size as `hold_amount` (always positive).
pub fn ledger_entry(e: &LedgerEntry) -> Value {
    let (amount, hold_amount) = match e.kind {
        LedgerKind::Hold | LedgerKind::Release => (Usd::ZERO, Some(Usd(e.amount.0.abs()))),
        LedgerKind::Credit | LedgerKind::Charge => (e.amount, None),
    };
    json!({
        "id": e.id,
        "object": "ledger_entry",
        "at": rfc3339(e.at),
        "kind": e.kind.as_str(),
        "amount": amount.to_json(),
        "hold_amount": hold_amount.map(|h| h.to_json()),
        "rental_id": e.rental_id,
        "request_id": e.request_id,
        "note": e.note,
        "balance_after": e.balance_after.to_json(),
    })
}

/// The caller's money, with the spend guards the operator set on it (SPEC section 6):
/// `spent_this_month` is as of `now`, the clock's time.
pub fn credits(a: &Account, now: i64) -> Value {
    let mut v = json!({
        "object": "credits",
        "balance": a.balance.to_json(),
        "held": a.held.to_json(),
        "available": a.available().to_json(),
    });
    add_limits(&mut v, a, now);
    v
}

pub fn account(a: &Account, now: i64) -> Value {
    let mut v = json!({
        "id": a.id,
        "object": "account",
        "name": a.name,
        "created_at": rfc3339(a.created_at),
        "balance": a.balance.to_json(),
        "held": a.held.to_json(),
        "available": a.available().to_json(),
    });
    add_limits(&mut v, a, now);
    v
}

/// The caps (null when unset) and what was charged since 00:00 UTC on the 1st.
fn add_limits(v: &mut Value, a: &Account, now: i64) {
    v["max_usd_per_hour"] = a.max_usd_per_hour.map(Usd::to_json).into();
    v["max_usd_per_month"] = a.max_usd_per_month.map(Usd::to_json).into();
    v["spent_this_month"] = crate::guards::spent_this_month(a, now).to_json();
}

pub fn api_key(k: &ApiKey, secret: Option<&str>) -> Value {
    json!({
        "id": k.id,
        "object": "api_key",
        "account_id": k.account_id,
        "prefix": k.prefix,
        "created_at": rfc3339(k.created_at),
        "revoked_at": opt_time(k.revoked_at),
        "key": secret,
    })
}

pub fn list(data: Vec<Value>, next_cursor: Option<String>) -> Value {
    json!({"object": "list", "data": data, "next_cursor": next_cursor})
}

/// A row of price history: prices per GPU-hour, exact like the offers' own.
pub(crate) fn price_row(r: &crate::history::PriceRow) -> Value {
    json!({
        "gpu": r.gpu,
        "provider": r.provider,
        "interruptible": r.interruptible,
        "start": rfc3339(r.start),
        "min_price_per_gpu_hour": r.min.to_json(),
        "median_price_per_gpu_hour": r.median.to_json(),
        "max_price_per_gpu_hour": r.max.to_json(),
        "offers": r.offers,
        "available": r.available,
    })
}

/// A webhook endpoint. `secret` is given only in the answer that created it: the key
/// is never shown again.
pub(crate) fn webhook(w: &crate::model::Webhook, secret: Option<&str>) -> Value {
    let mut v = json!({
        "id": w.id,
        "object": "webhook",
        "url": w.url,
        "events": w.events,
        "description": w.description,
        "created_at": rfc3339(w.created_at),
    });
    if let Some(s) = secret {
        v["secret"] = Value::String(s.to_string());
    }
    v
}

/// One delivery of an event to an endpoint (its body is not repeated here).
pub(crate) fn delivery(d: &crate::model::Delivery) -> Value {
    json!({
        "id": format!("dlv_{}", d.seq),
        "object": "webhook_delivery",
        "webhook_id": d.webhook_id,
        "event_id": d.event_id,
        "type": d.event_type,
        "status": d.state.as_str(),
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": rfc3339(d.created_at),
        "last_attempt_at": opt_time(d.last_attempt_at),
        "next_attempt_at": opt_time(d.next_attempt_at),
        "finished_at": opt_time(d.finished_at),
    })
}
