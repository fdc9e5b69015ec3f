//! `/v1/credits`: the caller's balance and ledger.

use std::sync::Arc;

use hyper::StatusCode;

use super::super::router::{Ctx, Reply};
use super::super::{views, App};
use crate::accounts;
use crate::error::Result;

pub async fn balance(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let a = accounts::get_account(&app.store, &ctx.account()?.account_id).await?;
    Ok((StatusCode::OK, views::credits(&a, app.clock.now())))
}

pub async fn ledger(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let account = &ctx.account()?.account_id;
    let (limit, before) = super::seq_page_query(&ctx.query)?;
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
