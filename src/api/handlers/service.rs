//! The service's own routes: health, readiness, the OpenAPI document, metrics.

use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::super::router::{full, json_response, Ctx, Reply};
use super::super::{metrics, openapi, App, Body};
use crate::error::{Error, Result};

pub async fn healthz(_app: &Arc<App>, _ctx: &Ctx) -> Result<Reply> {
    Ok((StatusCode::OK, json!({"status": "ok"})))
}

pub async fn readyz(app: &Arc<App>, _ctx: &Ctx) -> Result<Reply> {
    // Ready once the store answers; offers may still be loading.
    app.store.read(|_rx| Ok::<_, Error>(())).await?;
    Ok((
        StatusCode::OK,
        json!({"status": "ready", "offers": app.market.len()}),
    ))
}

pub async fn openapi(_app: &Arc<App>, _ctx: &Ctx) -> Result<Response<Body>> {
    Ok(json_response(StatusCode::OK, openapi::document()))
}

/// Prometheus text: the one route that answers text rather than JSON.
pub async fn metrics(app: &Arc<App>, _ctx: &Ctx) -> Result<Response<Body>> {
    let text = metrics::render(app).await?;
    let mut r = Response::new(full(text.into_bytes()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    Ok(r)
}
