//! The OpenAI-compatible routes: models, and the completions, whose answers (a JSON
//! body, a stream, 202 while a model deploys) `api::answer` renders.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::super::router::{Ctx, Reply};
use super::super::{App, Body};
use crate::error::Result;
use crate::inference::{prefer_wait, Endpoint};

pub async fn list_models(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let v = app
        .inference
        .list_models(&ctx.account()?.account_id)
        .await?;
    Ok((StatusCode::OK, v))
}

/// The id takes the rest of the path: `/v1/models/meta-llama/Llama-3.1-8B-Instruct`.
pub async fn get_model(app: &Arc<App>, ctx: &Ctx) -> Result<Reply> {
    let v = app
        .inference
        .get_model(&ctx.account()?.account_id, ctx.param("id")?)
        .await?;
    Ok((StatusCode::OK, v))
}

pub async fn chat_completions(app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>> {
    complete(app, ctx, Endpoint::Chat).await
}

pub async fn completions(app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>> {
    complete(app, ctx, Endpoint::Completions).await
}

pub async fn embeddings(app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>> {
    complete(app, ctx, Endpoint::Embeddings).await
}

/// A request with a `Prefer` header waits as it says (`wait=N`, or not at all); one
/// without waits `deployments.default_wait_seconds` (SPEC section 10).
async fn complete(app: &Arc<App>, ctx: &Ctx, ep: Endpoint) -> Result<Response<Body>> {
    let prefer = ctx.headers.get_all("prefer");
    let wait = if prefer.iter().next().is_some() {
        prefer_wait(prefer.iter().filter_map(|v| v.to_str().ok()))
    } else {
        Some(app.cfg.deployments.default_wait_seconds).filter(|&s| s > 0)
    };
    app.inference
        .handle(&ctx.account()?.account_id, ep, &ctx.body, wait)
        .await
        .map(super::super::answer::render)
}
