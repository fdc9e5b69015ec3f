//! `/v1/gpus`: offers, and the caller's rentals.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::super::router::{idempotent, Ctx, Reply};
use super::super::{views, App};
use crate::error::{Error, Result};
use crate::market::{OfferFilter, OfferQuery};
use crate::model::TerminationReason;
use crate::money::{self, Usd};
use crate::rentals::{RentRequest, RentTarget};

/// The hot read: each offer's JSON is encoded once while it is listed
/// ([`crate::market::Listed::rendered`]) and a page is those bytes joined, with no
/// `Value` tree and no copy of an offer per request.
pub async fn list_offers(app: &Arc<App>, ctx: &Ctx) -> Result<hyper::Response<super::super::Body>> {
    let q = OfferQuery::from_query_string(&ctx.query)?;
    let page = app.market.query(&q)?;
    let mut out = Vec::with_capacity(64 + page.data.len() * 360);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (i, o) in page.data.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(o.rendered(|o| views::offer(o).to_string().into_bytes()));
    }
    out.extend_from_slice(br#"],"next_cursor":"#);
    match &page.next_cursor {
        Some(c) => out.extend_from_slice(Value::String(c.clone()).to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(super::super::router::json_bytes(StatusCode::OK, out))
}

pub async fn get_offer(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let id = ctx.param("id")?;
    let o = app
        .market
        .get(id)
        .ok_or_else(|| Error::NotFound(format!("no offer with id '{id}'")))?;
    Ok((StatusCode::OK, views::offer(&o)))
}

pub async fn rent(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let account = ctx.account()?;
    idempotent(app, &account.account_id, ctx, |stable| async move {
        let mut req = parse_rent(ctx)?;
        req.id = stable.map(|s| format!("rnt_{s}"));
        let r = app.rentals.rent(&account.account_id, req).await?;
        Ok((StatusCode::CREATED, views::rental(&r)))
    })
    .await
}

pub async fn list_rentals(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    super::list_rentals(app, ctx, Some(&ctx.account()?.account_id)).await
}

pub async fn get_rental(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let r = app
        .rentals
        .get(Some(&ctx.account()?.account_id), ctx.param("id")?)
        .await?;
    Ok((StatusCode::OK, views::rental(&r)))
}

pub async fn teardown(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let r = app
        .rentals
        .teardown(
            Some(&ctx.account()?.account_id),
            ctx.param("id")?,
            TerminationReason::User,
        )
        .await?;
    Ok((StatusCode::OK, views::rental(&r)))
}

pub async fn activity(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let r = app
        .rentals
        .touch(&ctx.account()?.account_id, ctx.param("id")?)
        .await?;
    Ok((StatusCode::OK, views::rental(&r)))
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
    #[serde(default, deserialize_with = "money::de_opt")]
    max_cost: Option<Usd>,
}

fn check_len(param: &str, v: &Option<String>, max: usize) -> Result<()> {
    if let Some(s) = v {
        if s.is_empty() || s.chars().count() > max {
            return Err(Error::invalid_param(
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
            return Err(Error::invalid(
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
        (None, false) => return Err(Error::invalid(
            "give offer_id, or criteria such as {\"gpu\": \"H100\", \"max_price_per_hour\": 2.5}",
        )),
    };
    if let Some(n) = b.gpu_count {
        if !(1..=64).contains(&n) {
            return Err(Error::invalid_param(
                "gpu_count",
                "gpu_count must be from 1 to 64",
            ));
        }
    }
    if let Some(p) = b.max_price_per_hour {
        if p <= Usd::ZERO {
            return Err(Error::invalid_param(
                "max_price_per_hour",
                "max_price_per_hour must be positive",
            ));
        }
    }
    if let Some(c) = b.max_cost {
        if c <= Usd::ZERO {
            return Err(Error::invalid_param(
                "max_cost",
                "max_cost must be a positive amount of USD",
            ));
        }
    }
    check_len("name", &b.name, 100)?;
    check_len("image", &b.image, 500)?;
    check_len("ssh_public_key", &b.ssh_public_key, 16 * 1024)?;
    let env = b.env.unwrap_or_default();
    if env.len() > 64 {
        return Err(Error::invalid_param(
            "env",
            "at most 64 environment variables",
        ));
    }
    for (k, v) in &env {
        let ok = !k.is_empty()
            && k.len() <= 128
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !ok || v.len() > 4096 {
            return Err(Error::invalid_param(
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
                return Err(Error::invalid_param(
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
        max_cost: b.max_cost,
        model: None,
        id: None,
    })
}
