//! `/v1/credits`: the caller's balance and ledger.

use std::sync::Arc;

use hyper::StatusCode;

use super::super::router::{Ctx, Reply};
use super::super::{views, App};
use super::{parse_limit, query_pairs};
use crate::accounts;
use crate::error::{Error, Result};

pub async fn balance(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let a = accounts::get_account(&app.store, &ctx.account()?.account_id).await?;
    Ok((StatusCode::OK, views::credits(&a, app.clock.now())))
}

pub async fn ledger(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let account = &ctx.account()?.account_id;
    let mut limit = 50;
    let mut before = None;
    for (k, v) in query_pairs(&ctx.query)? {
        match k.as_str() {
            "limit" => limit = parse_limit(&v, 1000)?,
            "cursor" => {
                before = Some(v.parse::<u64>().map_err(|_| {
                    Error::invalid_param("cursor", "cursor must be a value returned as next_cursor")
                })?)
            }
            other => {
                return Err(Error::invalid_param(
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
