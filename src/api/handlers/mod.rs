//! Request handlers, one per route, a module per area; `api::routes` names which
//! serves what. They parse and validate, call the domain, and answer JSON views;
//! errors go back as `Error` for `api::error` to map.

pub mod admin;
pub mod console;
pub mod credits;
pub mod gpus;
pub mod openai;
pub mod prices;
pub mod service;
pub mod webhooks;

use hyper::StatusCode;

use super::router::{Ctx, Reply};
use super::{views, App};
use crate::error::{Error, Result};
use crate::model::RentalState;

/// Query string pairs, percent-decoded (`+` is a space). A parameter with an empty
/// value (`?limit=`, as a form leaves it) is as if absent, on every route.
pub fn query_pairs(q: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let dec = |s: &str| {
            super::router::percent_decode(&s.replace('+', " ")).ok_or_else(|| {
                Error::invalid("the query string is not valid percent-encoded UTF-8")
            })
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
            Error::invalid_param("limit", format!("limit must be an integer from 1 to {max}"))
        })
}

/// `limit` (default 50, at most 1,000) and `cursor` (the `seq` of a page's last entry,
/// as `next_cursor` gave it) of a list paged by sequence number, newest first; any
/// other parameter is refused.
fn seq_page_query(q: &str) -> Result<(usize, Option<u64>)> {
    let mut limit = 50;
    let mut before = None;
    for (k, v) in query_pairs(q)? {
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
    Ok((limit, before))
}

/// A page of rentals, newest first: `account`'s, or (for the admin, `None`) everyone's
/// or one `?account=`'s.
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
                    Error::invalid_param(
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
                            Error::invalid_param("cursor", "cursor must be a value returned as next_cursor")
                        })?,
                )
            }
            other => {
                return Err(Error::invalid_param(other, format!("unknown query parameter '{other}'")))
            }
        }
    }
    let owner = account.map(str::to_string).or(account_filter);
    let page = app
        .rentals
        .page(owner.as_deref(), state, after, limit + 1)
        .await?;
    let next = (page.len() > limit)
        .then(|| {
            page.get(limit - 1)
                .map(|r| format!("{}.{}", r.created_at, r.id))
        })
        .flatten();
    Ok((
        StatusCode::OK,
        views::list(page.iter().take(limit).map(views::rental).collect(), next),
    ))
}
