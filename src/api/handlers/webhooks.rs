//! `/admin/v1/webhooks`: endpoints and their deliveries (SPEC section 8).
//!
//! Creating one is not idempotent by `Idempotency-Key`: the stored answer would keep a
//! second copy of the secret for 24 h. A retried create makes a second endpoint, which
//! the admin can see in the list and delete.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::super::router::{Ctx, Reply};
use super::super::{views, App};
use super::query_pairs;
use crate::error::{Error, Result};
use crate::webhooks::admin::{self, NewWebhook};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

pub async fn create(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let b: Body = ctx.json()?;
    let (w, secret) = admin::create(
        &app.store,
        &app.clock,
        NewWebhook {
            url: b.url,
            events: b.events,
            description: b.description,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, views::webhook(&w, Some(&secret))))
}

pub async fn list(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    if let Some((k, _)) = query_pairs(&ctx.query)?.into_iter().next() {
        return Err(Error::invalid_param(
            &k,
            format!("unknown query parameter '{k}'"),
        ));
    }
    let v = admin::list(&app.store).await?;
    Ok((
        StatusCode::OK,
        views::list(v.iter().map(|w| views::webhook(w, None)).collect(), None),
    ))
}

pub async fn delete(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let w = admin::delete(&app.store, ctx.param("id")?).await?;
    Ok((
        StatusCode::OK,
        json!({"id": w.id, "object": "webhook", "deleted": true}),
    ))
}

/// Newest first; a cursor is the seq of the last delivery of a page.
pub async fn deliveries(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let (limit, before) = super::seq_page_query(&ctx.query)?;
    let page = admin::deliveries(&app.store, ctx.param("id")?, before, limit + 1).await?;
    let next = (page.len() > limit)
        .then(|| page.get(limit - 1).map(|d| d.seq.to_string()))
        .flatten();
    Ok((
        StatusCode::OK,
        views::list(page.iter().take(limit).map(views::delivery).collect(), next),
    ))
}
