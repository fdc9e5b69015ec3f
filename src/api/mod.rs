//! The HTTP API: a hyper HTTP/1 server over a bound listener, and the only code that
//! knows hyper server types. `routes` is the one route table (dispatch, log and metric
//! labels, access, `/openapi.json`); `router` does what every request goes through
//! (auth, rate limits, body limits, idempotency); `handlers` parse and call the domain;
//! `views` are the JSON shown; `answer` renders inference answers; `error` maps every
//! domain error to its status and OpenAI error body.
//!
//! `serve(listener, app, shutdown)` runs the shared accept loop (`http_server`):
//! connections must send their headers within `limits.header_read_timeout_seconds`;
//! on shutdown the server stops accepting and gives in-flight requests 10 s to finish.

mod answer;
pub(crate) mod error;
mod handlers;
mod metrics;
pub(crate) mod openapi;
mod router;
pub mod routes;
pub(crate) mod views;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::combinators::BoxBody;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::http_server::{self, ServerOptions};
use crate::inference::Inference;
use crate::market::Market;
use crate::providers::registry::Registry;
use crate::rentals::Rentals;
use crate::store::Store;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// How long in-flight requests get to finish after shutdown is asked.
const DRAIN: Duration = Duration::from_secs(10);

/// Everything a request handler may use.
pub(crate) struct App {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub market: Market,
    pub registry: Arc<Registry>,
    pub rentals: Rentals,
    pub inference: Arc<Inference>,
    pub clock: Clock,
    /// SHA-256 hex of the admin token.
    pub admin_hash: String,
    pub(crate) limiter: DefaultKeyedRateLimiter<String>,
    /// Live API keys in memory (authentication without a store read).
    pub(crate) keys: crate::accounts::KeyCache,
    /// Idempotency keys being processed right now (scope + key).
    pub(crate) in_flight: Mutex<HashSet<String>>,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        market: Market,
        registry: Arc<Registry>,
        rentals: Rentals,
        inference: Arc<Inference>,
        clock: Clock,
        admin_hash: String,
    ) -> App {
        let rps = std::num::NonZeroU32::new(cfg.limits.requests_per_second.max(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            std::num::NonZeroU32::new(cfg.limits.burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst));
        App {
            cfg,
            store,
            market,
            registry,
            rentals,
            inference,
            clock,
            admin_hash,
            limiter,
            keys: crate::accounts::KeyCache::default(),
            in_flight: Mutex::new(HashSet::new()),
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, then drains.
pub(crate) async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let opts = ServerOptions {
        name: "api",
        header_read_timeout: Duration::from_secs(app.cfg.limits.header_read_timeout_seconds.max(1)),
        drain: DRAIN,
    };
    http_server::serve(listener, opts, shutdown, move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(router::handle(app, req).await) }
    })
    .await;
}
