//! `/admin/v1`: accounts and their keys and credit, providers, every rental.

use std::sync::Arc;

use futures_util::StreamExt;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::super::router::{idempotent, Ctx, Reply};
use super::super::{views, App};
use crate::accounts;
use crate::error::{Error, Result};
use crate::model::TerminationReason;
use crate::money::{self, Usd};

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

pub async fn create_account(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    idempotent(app, "admin", ctx, |stable| async move {
        let b: NewAccount = ctx.json()?;
        let (a, k) = accounts::create_account_with_id(
            &app.store,
            &app.clock,
            &b.name,
            b.credit.unwrap_or(Usd::ZERO),
            stable.map(|s| format!("acct_{s}")),
        )
        .await?;
        let mut v = views::account(&a, app.clock.now());
        v["api_key"] = views::api_key(&k.key, Some(&k.secret));
        Ok((StatusCode::CREATED, v))
    })
    .await
}

pub async fn list_accounts(app: &Arc<App>, _ctx: &Ctx) -> Result<Reply> {
    let v = app.store.read(|rx| rx.accounts()).await?;
    Ok((
        StatusCode::OK,
        views::list(
            v.iter()
                .map(|a| views::account(a, app.clock.now()))
                .collect(),
            None,
        ),
    ))
}

pub async fn get_account(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let a = accounts::get_account(&app.store, ctx.param("id")?).await?;
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
    let mut v = views::account(&a, app.clock.now());
    v["api_keys"] = Value::Array(keys.iter().map(|k| views::api_key(k, None)).collect());
    Ok((StatusCode::OK, v))
}

pub async fn add_credit(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let id = ctx.param("id")?;
    idempotent(app, "admin", ctx, |stable| async move {
        let b: CreditBody = ctx.json()?;
        if let Some(n) = &b.note {
            if n.chars().count() > 500 {
                return Err(Error::invalid_param(
                    "note",
                    "note must be at most 500 characters",
                ));
            }
        }
        let (a, e) =
            accounts::add_credit_once(&app.store, &app.clock, id, b.amount, b.note, stable).await?;
        let mut v = views::account(&a, app.clock.now());
        v["entry"] = views::ledger_entry(&e);
        Ok((StatusCode::OK, v))
    })
    .await
}

/// `PATCH /admin/v1/accounts/{id}` body: each cap absent (unchanged), null (cleared)
/// or a USD amount (set).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default, deserialize_with = "money::de_patch")]
    max_usd_per_hour: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "money::de_patch")]
    max_usd_per_month: Option<Option<Usd>>,
}

/// Sets or clears an account's spend guards (SPEC section 6).
pub async fn set_limits(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let b: LimitsBody = ctx.json()?;
    if b.max_usd_per_hour.is_none() && b.max_usd_per_month.is_none() {
        return Err(Error::invalid(
            "give max_usd_per_hour and/or max_usd_per_month (a USD amount, or null to clear)",
        ));
    }
    let patch = accounts::LimitsPatch {
        max_usd_per_hour: b.max_usd_per_hour,
        max_usd_per_month: b.max_usd_per_month,
    };
    let a = accounts::set_limits(&app.store, ctx.param("id")?, patch).await?;
    Ok((StatusCode::OK, views::account(&a, app.clock.now())))
}

pub async fn create_key(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let id = ctx.param("id")?;
    idempotent(app, "admin", ctx, |stable| async move {
        let (k, secret) = accounts::create_key_with_id(
            &app.store,
            &app.clock,
            id,
            stable.map(|s| format!("key_{s}")),
        )
        .await?;
        Ok((StatusCode::CREATED, views::api_key(&k, secret.as_deref())))
    })
    .await
}

pub async fn revoke_key(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let k = accounts::revoke_key(&app.store, &app.clock, ctx.param("key_id")?).await?;
    app.keys.forget(&k.hash);
    Ok((StatusCode::OK, views::api_key(&k, None)))
}

pub async fn providers(app: &Arc<App>, _ctx: &Ctx) -> Result<Reply> {
    let v = serde_json::to_value(app.registry.statuses()).map_err(|e| Error::Bug(e.to_string()))?;
    Ok((
        StatusCode::OK,
        views::list(v.as_array().cloned().unwrap_or_default(), None),
    ))
}

pub async fn list_rentals(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    super::list_rentals(app, ctx, None).await
}

pub async fn get_rental(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let r = app.rentals.get(None, ctx.param("id")?).await?;
    Ok((StatusCode::OK, views::rental(&r)))
}

pub async fn teardown(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let r = app
        .rentals
        .teardown(None, ctx.param("id")?, TerminationReason::Admin)
        .await?;
    Ok((StatusCode::OK, views::rental(&r)))
}

/// `GET /admin/v1/backup`: a consistent snapshot of the database as a redb file,
/// streamed from an unlinked temporary copy (SPEC section 10).
pub async fn backup(app: &Arc<App>, _ctx: &Ctx) -> Result<hyper::Response<super::super::Body>> {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
    let (file, stats) = app.store.backup().await?;
    tracing::info!(
        tables = stats.tables,
        entries = stats.entries,
        bytes = stats.bytes,
        "backup snapshot written"
    );
    let frames =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024)
            .map(|chunk| {
                chunk
                    .map(hyper::body::Frame::data)
                    .map_err(|e| -> super::super::BoxError { e.into() })
            });
    let mut r = hyper::Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let stamp = crate::clock::rfc3339(app.clock.now()).replace(':', "");
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(stats.bytes));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"spotd-{stamp}.redb\"")) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-spotd-schema-version",
        HeaderValue::from(crate::store::tables::SCHEMA_VERSION),
    );
    Ok(r)
}
