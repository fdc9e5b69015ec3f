//! `GET /v1/gpus/prices`: price history (SPEC section 7), read from the hourly rows
//! `crate::history` keeps.

use std::sync::Arc;

use hyper::StatusCode;

use super::super::router::{Ctx, Reply};
use super::super::{views, App};
use super::query_pairs;
use crate::error::Result;
use crate::history;

pub async fn list_prices(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let q = history::parse_query(&query_pairs(&ctx.query)?, app.clock.now())?;
    let page = history::query(&app.store, q).await?;
    Ok((
        StatusCode::OK,
        views::list(
            page.data.iter().map(views::price_row).collect(),
            page.next_cursor,
        ),
    ))
}
