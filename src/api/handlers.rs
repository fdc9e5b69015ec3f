//! Request handlers, one per route. They parse and validate, call the domain, and
//! answer JSON views; errors go back as `Error` for `api::error` to map.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::router::{idempotent, Ctx, Reply};
use super::{views, App};
use crate::accounts;
use crate::error::{Error, Result};
use crate::market::{OfferFilter, OfferQuery};
use crate::model::{Account, RentalState, TerminationReason};
use crate::money::{self, Usd};
use crate::rentals::{RentRequest, RentTarget};

pub fn healthz() -> Reply {
    (StatusCode::OK, json!({"status": "ok"}))
}

pub async fn readyz(app: &App) -> Result<Reply> {
    // Ready once the store answers; offers may still be loading.
    app.store.read(|_rx| Ok::<_, Error>(())).await?;
    Ok((
        StatusCode::OK,
        json!({"status": "ready", "offers": app.market.len()}),
    ))
}

fn not_found(ctx: &Ctx) -> Error {
    Error::NotFound(format!(
        "no route for {} /{}",
        ctx.method,
        ctx.segs.join("/")
    ))
}

/// Query string pairs, percent-decoded (`+` is a space). A parameter with an empty
/// value (`?limit=`, as a form leaves it) is as if absent, on every route.
pub fn query_pairs(q: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let dec = |s: &str| {
            super::router::percent_decode(&s.replace('+', " "))
                .ok_or_else(|| Error::bad("the query string is not valid percent-encoded UTF-8"))
        };
        let (k, v) = (dec(k)?, dec(v)?);
        if !v.is_empty() {
            out.push((k, v));
        }
    }
    Ok(out)
}

fn parse_limit(v: &str, max: usize) -> Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            Error::bad_param("limit", format!("limit must be an integer from 1 to {max}"))
        })
}

/// The OpenAI-compatible routes, which answer their own responses (streams, 202).
/// `None` when the route is not one of them.
pub async fn inference(
    app: &Arc<App>,
    ctx: &Ctx,
    account: &Account,
) -> Option<Result<hyper::Response<super::Body>>> {
    use crate::inference::{prefer_wait, Endpoint};
    let s: Vec<&str> = ctx.segs.iter().map(String::as_str).collect();
    let ep = match (&ctx.method, &s[1..]) {
        (&Method::POST, ["chat", "completions"]) => Endpoint::Chat,
        (&Method::POST, ["completions"]) => Endpoint::Completions,
        (&Method::POST, ["embeddings"]) => Endpoint::Embeddings,
        (&Method::GET, ["models"]) => {
            return Some(
                app.inference
                    .list_models(&account.id)
                    .await
                    .map(|v| super::router::json_response(StatusCode::OK, &v)),
            )
        }
        (&Method::GET, ["models", id @ ..]) if !id.is_empty() => {
            let id = id.join("/");
            return Some(
                app.inference
                    .get_model(&account.id, &id)
                    .await
                    .map(|v| super::router::json_response(StatusCode::OK, &v)),
            );
        }
        _ => return None,
    };
    let prefer = ctx
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok());
    Some(
        app.inference
            .handle(&account.id, ep, &ctx.body, prefer_wait(prefer))
            .await
            .map(super::answer::render),
    )
}

pub async fn user(app: &Arc<App>, ctx: &Ctx, account: &Account) -> Result<Reply> {
    let s: Vec<&str> = ctx.segs.iter().map(String::as_str).collect();
    match (&ctx.method, &s[1..]) {
        (&Method::GET, ["gpus", "offers"]) => {
            let q = OfferQuery::from_query_string(&ctx.query)?;
            let page = app.market.query(&q)?;
            Ok((
                StatusCode::OK,
                views::list(
                    page.data.iter().map(views::offer).collect(),
                    page.next_cursor,
                ),
            ))
        }
        (&Method::GET, ["gpus", "offers", id]) => {
            let o = app
                .market
                .get(id)
                .ok_or_else(|| Error::NotFound(format!("no offer with id '{id}'")))?;
            Ok((StatusCode::OK, views::offer(&o)))
        }
        (&Method::POST, ["gpus", "rentals"]) => {
            idempotent(app, &account.id, ctx, |stable| async move {
                let mut req = parse_rent(ctx)?;
                req.id = stable.map(|s| format!("rnt_{s}"));
                let r = app.rentals.rent(&account.id, req).await?;
                Ok((StatusCode::CREATED, views::rental(&r)))
            })
            .await
        }
        (&Method::GET, ["gpus", "rentals"]) => list_rentals(app, ctx, Some(&account.id)).await,
        (&Method::GET, ["gpus", "rentals", id]) => {
            let r = app.rentals.get(Some(&account.id), id).await?;
            Ok((StatusCode::OK, views::rental(&r)))
        }
        (&Method::DELETE, ["gpus", "rentals", id]) => {
            let r = app
                .rentals
                .teardown(Some(&account.id), id, TerminationReason::User)
                .await?;
            Ok((StatusCode::OK, views::rental(&r)))
        }
        (&Method::POST, ["gpus", "rentals", id, "activity"]) => {
            let r = app.rentals.touch(&account.id, id).await?;
            Ok((StatusCode::OK, views::rental(&r)))
        }
        (&Method::GET, ["credits"]) => {
            let a = accounts::get_account(&app.store, &account.id).await?;
            Ok((StatusCode::OK, views::credits(&a)))
        }
        (&Method::GET, ["credits", "ledger"]) => ledger(app, ctx, &account.id).await,
        _ => Err(not_found(ctx)),
    }
}

async fn list_rentals(app: &App, ctx: &Ctx, account: Option<&str>) -> Result<Reply> {
    let mut state = None;
    let mut account_filter = None;
    let mut limit = 100;
    // Newest first; a cursor is the (created_at, id) of the last rental of a page.
    let mut after: Option<(i64, String)> = None;
    for (k, v) in query_pairs(&ctx.query)? {
        match k.as_str() {
            "state" => {
                state = Some(RentalState::parse(&v).ok_or_else(|| {
                    Error::bad_param(
                        "state",
                        "state must be one of provisioning, running, terminating, terminated, failed, interrupted",
                    )
                })?)
            }
            "account" if account.is_none() => account_filter = Some(v),
            "limit" => limit = parse_limit(&v, 1000)?,
            "cursor" => {
                after = Some(
                    v.split_once('.')
                        .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id.to_string())))
                        .ok_or_else(|| {
                            Error::bad_param("cursor", "cursor must be a value returned as next_cursor")
                        })?,
                )
            }
            other => {
                return Err(Error::bad_param(other, format!("unknown query parameter '{other}'")))
            }
        }
    }
    let owner = account.map(str::to_string).or(account_filter);
    let all = app.rentals.list(owner.as_deref(), state).await?;
    let page: Vec<_> = all
        .iter()
        .filter(|r| {
            after
                .as_ref()
                .is_none_or(|(t, id)| (r.created_at, &r.id) < (*t, id))
        })
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit)
        .then(|| {
            page.get(limit - 1)
                .map(|r| format!("{}.{}", r.created_at, r.id))
        })
        .flatten();
    Ok((
        StatusCode::OK,
        views::list(
            page.iter().take(limit).map(|r| views::rental(r)).collect(),
            next,
        ),
    ))
}

async fn ledger(app: &App, ctx: &Ctx, account: &str) -> Result<Reply> {
    let mut limit = 50;
    let mut before = None;
    for (k, v) in query_pairs(&ctx.query)? {
        match k.as_str() {
            "limit" => limit = parse_limit(&v, 1000)?,
            "cursor" => {
                before = Some(v.parse::<u64>().map_err(|_| {
                    Error::bad_param("cursor", "cursor must be a value returned as next_cursor")
                })?)
            }
            other => {
                return Err(Error::bad_param(
                    other,
                    format!("unknown query parameter '{other}'"),
                ))
            }
        }
    }
    let acct = account.to_string();
    let entries = app
        .store
        .read(move |rx| rx.ledger(&acct, before, limit + 1))
        .await?;
    let more = entries.len() > limit;
    let page: Vec<_> = entries.into_iter().take(limit).collect();
    let next = if more {
        page.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok((
        StatusCode::OK,
        views::list(page.iter().map(views::ledger_entry).collect(), next),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RentBody {
    offer_id: Option<String>,
    gpu: Option<String>,
    gpu_count: Option<u32>,
    min_gpu_count: Option<u32>,
    min_vram_gb: Option<u32>,
    #[serde(default, deserialize_with = "money::de_opt")]
    max_price_per_hour: Option<Usd>,
    provider: Option<String>,
    region: Option<String>,
    interruptible: Option<bool>,
    image: Option<String>,
    name: Option<String>,
    ssh_public_key: Option<String>,
    env: Option<BTreeMap<String, String>>,
    idle_timeout_seconds: Option<u64>,
    max_duration_seconds: Option<u64>,
}

fn check_len(param: &str, v: &Option<String>, max: usize) -> Result<()> {
    if let Some(s) = v {
        if s.is_empty() || s.len() > max {
            return Err(Error::bad_param(
                param,
                format!("{param} must be 1 to {max} characters"),
            ));
        }
    }
    Ok(())
}

fn parse_rent(ctx: &Ctx) -> Result<RentRequest> {
    let b: RentBody = ctx.json()?;
    let has_criteria = b.gpu.is_some()
        || b.gpu_count.is_some()
        || b.min_gpu_count.is_some()
        || b.min_vram_gb.is_some()
        || b.provider.is_some()
        || b.region.is_some()
        || b.interruptible.is_some();
    let target = match (&b.offer_id, has_criteria) {
        (Some(_), true) => {
            return Err(Error::bad(
                "give either offer_id or matching criteria (gpu, gpu_count, ...), not both",
            ))
        }
        (Some(id), false) => RentTarget::Offer(id.clone()),
        (None, true) => RentTarget::Cheapest(OfferFilter {
            gpu: b.gpu.clone(),
            gpu_count: b.gpu_count,
            min_gpu_count: b.min_gpu_count,
            min_vram_gb: b.min_vram_gb,
            provider: b.provider.clone(),
            region: b.region.clone(),
            interruptible: b.interruptible,
            ..OfferFilter::default()
        }),
        (None, false) => return Err(Error::bad(
            "give offer_id, or criteria such as {\"gpu\": \"H100\", \"max_price_per_hour\": 2.5}",
        )),
    };
    if let Some(n) = b.gpu_count {
        if !(1..=64).contains(&n) {
            return Err(Error::bad_param(
                "gpu_count",
                "gpu_count must be from 1 to 64",
            ));
        }
    }
    if let Some(p) = b.max_price_per_hour {
        if p <= Usd::ZERO {
            return Err(Error::bad_param(
                "max_price_per_hour",
                "max_price_per_hour must be positive",
            ));
        }
    }
    check_len("name", &b.name, 100)?;
    check_len("image", &b.image, 500)?;
    check_len("ssh_public_key", &b.ssh_public_key, 16 * 1024)?;
    let env = b.env.unwrap_or_default();
    if env.len() > 64 {
        return Err(Error::bad_param("env", "at most 64 environment variables"));
    }
    for (k, v) in &env {
        let ok = !k.is_empty()
            && k.len() <= 128
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !ok || v.len() > 4096 {
            return Err(Error::bad_param(
                "env",
                format!(
                    "env name '{k}' must be [A-Za-z_][A-Za-z0-9_]* and values at most 4096 bytes"
                ),
            ));
        }
    }
    for (param, v) in [
        ("idle_timeout_seconds", b.idle_timeout_seconds),
        ("max_duration_seconds", b.max_duration_seconds),
    ] {
        if let Some(s) = v {
            if s == 0 || s > 365 * 24 * 3600 {
                return Err(Error::bad_param(
                    param,
                    format!("{param} must be from 1 to 31536000"),
                ));
            }
        }
    }
    Ok(RentRequest {
        target,
        max_price_per_hour: b.max_price_per_hour,
        name: b.name,
        image: b.image,
        ssh_public_key: b.ssh_public_key,
        env,
        idle_timeout_seconds: b.idle_timeout_seconds,
        max_duration_seconds: b.max_duration_seconds,
        model: None,
        id: None,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    #[serde(default, deserialize_with = "money::de_opt")]
    credit: Option<Usd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    #[serde(deserialize_with = "money::de")]
    amount: Usd,
    note: Option<String>,
}

pub async fn admin(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let s: Vec<&str> = ctx.segs.iter().map(String::as_str).collect();
    let clock = &app.clock;
    match (&ctx.method, s.as_slice()) {
        (&Method::POST, ["admin", "v1", "accounts"]) => {
            idempotent(app, "admin", ctx, |stable| async move {
                let b: NewAccount = ctx.json()?;
                let (a, k) = accounts::create_account_with_id(
                    &app.store,
                    clock,
                    &b.name,
                    b.credit.unwrap_or(Usd::ZERO),
                    stable.map(|s| format!("acct_{s}")),
                )
                .await?;
                let mut v = views::account(&a);
                v["api_key"] = views::api_key(&k.key, Some(&k.secret));
                Ok((StatusCode::CREATED, v))
            })
            .await
        }
        (&Method::GET, ["admin", "v1", "accounts"]) => {
            let v = app.store.read(|rx| rx.accounts()).await?;
            Ok((
                StatusCode::OK,
                views::list(v.iter().map(views::account).collect(), None),
            ))
        }
        (&Method::GET, ["admin", "v1", "accounts", id]) => {
            let a = accounts::get_account(&app.store, id).await?;
            let aid = a.id.clone();
            let keys = app
                .store
                .read(move |rx| {
                    Ok::<_, Error>(
                        rx.api_keys()?
                            .into_iter()
                            .filter(|k| k.account_id == aid)
                            .collect::<Vec<_>>(),
                    )
                })
                .await?;
            let mut v = views::account(&a);
            v["api_keys"] = Value::Array(keys.iter().map(|k| views::api_key(k, None)).collect());
            Ok((StatusCode::OK, v))
        }
        (&Method::POST, ["admin", "v1", "accounts", id, "credits"]) => {
            idempotent(app, "admin", ctx, |stable| async move {
                let b: CreditBody = ctx.json()?;
                if let Some(n) = &b.note {
                    if n.len() > 500 {
                        return Err(Error::bad_param(
                            "note",
                            "note must be at most 500 characters",
                        ));
                    }
                }
                let (a, e) =
                    accounts::add_credit_once(&app.store, clock, id, b.amount, b.note, stable)
                        .await?;
                let mut v = views::account(&a);
                v["entry"] = views::ledger_entry(&e);
                Ok((StatusCode::OK, v))
            })
            .await
        }
        (&Method::POST, ["admin", "v1", "accounts", id, "keys"]) => {
            idempotent(app, "admin", ctx, |stable| async move {
                let (k, secret) = accounts::create_key_with_id(
                    &app.store,
                    clock,
                    id,
                    stable.map(|s| format!("key_{s}")),
                )
                .await?;
                Ok((StatusCode::CREATED, views::api_key(&k, secret.as_deref())))
            })
            .await
        }
        (&Method::DELETE, ["admin", "v1", "keys", id]) => {
            let k = accounts::revoke_key(&app.store, clock, id).await?;
            Ok((StatusCode::OK, views::api_key(&k, None)))
        }
        (&Method::GET, ["admin", "v1", "providers"]) => {
            let v = serde_json::to_value(app.registry.statuses())
                .map_err(|e| Error::Internal(e.to_string()))?;
            Ok((
                StatusCode::OK,
                views::list(v.as_array().cloned().unwrap_or_default(), None),
            ))
        }
        (&Method::GET, ["admin", "v1", "rentals"]) => list_rentals(app, ctx, None).await,
        (&Method::GET, ["admin", "v1", "rentals", id]) => {
            let r = app.rentals.get(None, id).await?;
            Ok((StatusCode::OK, views::rental(&r)))
        }
        (&Method::DELETE, ["admin", "v1", "rentals", id]) => {
            let r = app
                .rentals
                .teardown(None, id, TerminationReason::Admin)
                .await?;
            Ok((StatusCode::OK, views::rental(&r)))
        }
        _ => Err(not_found(ctx)),
    }
}
