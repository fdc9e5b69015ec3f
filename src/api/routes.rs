//! The one table of every route the API serves: method, path template, who may call
//! it, a summary, and the handler that answers it.
//!
//! Everything about a route comes from here: the router dispatches through it, logs
//! and metrics name a request by its template (`/v1/gpus/rentals/{id}`: raw paths
//! carry ids, which would make one metric series per object), and `/openapi.json`
//! lists its paths. There is no second list to keep in step.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use hyper::Response;

use super::handlers::{admin, console, credits, gpus, openai, prices, service, webhooks};
use super::router::{Ctx, IntoResponse};
use super::{App, Body};
use crate::error::Result;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Admin,
}

/// What a handler returns: its response, or an error for `api::error` to map.
pub(crate) type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<Body>>> + Send + 'a>>;

/// A route's handler. The router has checked the route's [`Access`] (and read the
/// body, see [`Route::body`]) before it runs; path parameters are in [`Ctx::param`].
pub(crate) type Handler = for<'a> fn(&'a Arc<App>, &'a Ctx) -> HandlerFuture<'a>;

#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    pub(crate) handler: Handler,
    /// The last parameter takes the rest of the path, slashes included: model ids like
    /// `meta-llama/Llama-3.1-8B-Instruct` contain a slash, and the OpenAI SDKs put the
    /// id in the path as it is (`/v1/models/meta-llama/Llama-3.1-8B-Instruct`).
    pub rest: bool,
    /// The router reads (and size-checks) the body before the handler runs. Public
    /// routes never read it, and neither does `GET /metrics`.
    pub body: bool,
}

impl Route {
    const fn new(
        method: &'static str,
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: Handler,
    ) -> Route {
        Route {
            method,
            path,
            access,
            summary,
            handler,
            rest: false,
            body: !matches!(access, Access::Public),
        }
    }

    const fn rest(self) -> Route {
        Route { rest: true, ..self }
    }

    const fn without_body(self) -> Route {
        Route {
            body: false,
            ..self
        }
    }
}

/// A `Handler` from an `async fn(&Arc<App>, &Ctx) -> Result<T>` where `T` is a
/// `Reply` (status and JSON) or a whole response.
macro_rules! h {
    ($f:path) => {{
        fn call<'a>(app: &'a Arc<App>, ctx: &'a Ctx) -> HandlerFuture<'a> {
            Box::pin(async move { $f(app, ctx).await.map(IntoResponse::into_response) })
        }
        call as Handler
    }};
}

const fn get(path: &'static str, access: Access, summary: &'static str, h: Handler) -> Route {
    Route::new("GET", path, access, summary, h)
}

const fn post(path: &'static str, access: Access, summary: &'static str, h: Handler) -> Route {
    Route::new("POST", path, access, summary, h)
}

const fn delete(path: &'static str, access: Access, summary: &'static str, h: Handler) -> Route {
    Route::new("DELETE", path, access, summary, h)
}

const fn patch(path: &'static str, access: Access, summary: &'static str, h: Handler) -> Route {
    Route::new("PATCH", path, access, summary, h)
}

use Access::{Admin, Public, User};

/// Every route, in the order the OpenAPI document lists them.
pub static ROUTES: &[Route] = &[
    get(
        "/healthz",
        Public,
        "Liveness: the process answers",
        h!(service::healthz),
    ),
    get(
        "/readyz",
        Public,
        "Readiness: the store answers",
        h!(service::readyz),
    ),
    get(
        "/openapi.json",
        Public,
        "This OpenAPI document",
        h!(service::openapi),
    ),
    get(
        "/",
        Public,
        "A browser (Accept: text/html) is redirected to the web console",
        h!(console::root),
    ),
    get("/console", Public, "The web console", h!(console::index)),
    get(
        "/console/config.json",
        Public,
        "Settings the web console shows (the session a rent's hold covers)",
        h!(console::config),
    ),
    get(
        "/console/{file}",
        Public,
        "The web console's stylesheet and scripts",
        h!(console::file),
    ),
    get(
        "/metrics",
        Admin,
        "Prometheus metrics (text exposition format)",
        h!(service::metrics),
    )
    .without_body(),
    get(
        "/v1/gpus/offers",
        User,
        "List GPU offers",
        h!(gpus::list_offers),
    ),
    get(
        "/v1/gpus/offers/{id}",
        User,
        "One GPU offer",
        h!(gpus::get_offer),
    ),
    get(
        "/v1/gpus/prices",
        User,
        "Price history per GPU model: hourly or daily min, median and max per GPU-hour",
        h!(prices::list_prices),
    ),
    post(
        "/v1/gpus/rentals",
        User,
        "Rent a GPU: an offer by id, or the cheapest match",
        h!(gpus::rent),
    ),
    get(
        "/v1/gpus/rentals",
        User,
        "List your rentals",
        h!(gpus::list_rentals),
    ),
    get(
        "/v1/gpus/rentals/{id}",
        User,
        "One of your rentals",
        h!(gpus::get_rental),
    ),
    delete(
        "/v1/gpus/rentals/{id}",
        User,
        "Tear a rental down",
        h!(gpus::teardown),
    ),
    post(
        "/v1/gpus/rentals/{id}/activity",
        User,
        "Mark a rental used (resets its idle clock)",
        h!(gpus::activity),
    ),
    get(
        "/v1/models",
        User,
        "Models and their availability",
        h!(openai::list_models),
    ),
    get(
        "/v1/models/{id}",
        User,
        "One model and its availability",
        h!(openai::get_model),
    )
    .rest(),
    post(
        "/v1/chat/completions",
        User,
        "OpenAI-compatible chat completion",
        h!(openai::chat_completions),
    ),
    post(
        "/v1/completions",
        User,
        "OpenAI-compatible text completion",
        h!(openai::completions),
    ),
    post(
        "/v1/embeddings",
        User,
        "OpenAI-compatible embeddings",
        h!(openai::embeddings),
    ),
    get(
        "/v1/credits",
        User,
        "Your credit balance",
        h!(credits::balance),
    ),
    get(
        "/v1/credits/ledger",
        User,
        "Your ledger entries, newest first",
        h!(credits::ledger),
    ),
    post(
        "/admin/v1/accounts",
        Admin,
        "Create an account (its first API key is shown once)",
        h!(admin::create_account),
    ),
    get(
        "/admin/v1/accounts",
        Admin,
        "List accounts",
        h!(admin::list_accounts),
    ),
    get(
        "/admin/v1/accounts/{id}",
        Admin,
        "One account with its API keys",
        h!(admin::get_account),
    ),
    patch(
        "/admin/v1/accounts/{id}",
        Admin,
        "Set or clear an account's spend guards (max_usd_per_hour, max_usd_per_month)",
        h!(admin::set_limits),
    ),
    post(
        "/admin/v1/accounts/{id}/credits",
        Admin,
        "Add credit to an account",
        h!(admin::add_credit),
    ),
    post(
        "/admin/v1/accounts/{id}/keys",
        Admin,
        "Create another API key for an account",
        h!(admin::create_key),
    ),
    delete(
        "/admin/v1/keys/{key_id}",
        Admin,
        "Revoke an API key",
        h!(admin::revoke_key),
    ),
    get(
        "/admin/v1/backup",
        Admin,
        "A consistent snapshot of the database (a redb file), streamed while serving",
        h!(admin::backup),
    )
    .without_body(),
    get(
        "/admin/v1/providers",
        Admin,
        "Provider status: offers, last refresh, last error",
        h!(admin::providers),
    ),
    get(
        "/admin/v1/rentals",
        Admin,
        "List every rental",
        h!(admin::list_rentals),
    ),
    get(
        "/admin/v1/rentals/{id}",
        Admin,
        "Any rental",
        h!(admin::get_rental),
    ),
    delete(
        "/admin/v1/rentals/{id}",
        Admin,
        "Tear any rental down",
        h!(admin::teardown),
    ),
    post(
        "/admin/v1/webhooks",
        Admin,
        "Register a webhook endpoint (its signing secret is shown once)",
        h!(webhooks::create),
    ),
    get(
        "/admin/v1/webhooks",
        Admin,
        "List webhook endpoints",
        h!(webhooks::list),
    ),
    delete(
        "/admin/v1/webhooks/{id}",
        Admin,
        "Delete a webhook endpoint (nothing more is sent to it)",
        h!(webhooks::delete),
    ),
    get(
        "/admin/v1/webhooks/{id}/deliveries",
        Admin,
        "A webhook endpoint's deliveries, newest first",
        h!(webhooks::deliveries),
    ),
];

/// Label for a request that matches no route (bounded: one label for all of them).
pub(crate) const UNMATCHED: &str = "unmatched";

/// A route's path parameters, taken from the request's path once, by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the table says about a request's method and path.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The route that serves it, with its path parameters.
    Found(&'static Route, Params),
    /// The path is a route's, the method is not (the first such route in the table):
    /// the answer is a 404, but its label is still that route's template.
    OtherMethod(&'static Route),
    NoRoute,
}

impl Lookup {
    /// The name logs and metrics give the request.
    pub fn label(&self) -> &'static str {
        match self {
            Lookup::Found(r, _) | Lookup::OtherMethod(r) => r.path,
            Lookup::NoRoute => UNMATCHED,
        }
    }
}

/// Finds the route of `method` and `segs` (the decoded, non-empty path segments).
/// `HEAD` is served by the `GET` route of the path (its answer without the body).
pub(crate) fn find(method: &str, segs: &[String]) -> Lookup {
    let method = if method == "HEAD" { "GET" } else { method };
    let mut other_method = None;
    for r in ROUTES {
        if walk(r, segs, |_, _| {}) {
            if r.method == method {
                let mut found = Vec::new();
                walk(r, segs, |name, at| found.push((name, segs[at].join("/"))));
                return Lookup::Found(r, Params(found));
            }
            other_method.get_or_insert(r);
        }
    }
    other_method.map_or(Lookup::NoRoute, Lookup::OtherMethod)
}

/// The `Allow` header of a path: the methods of every route it matches, `HEAD` with
/// `GET`.
pub(crate) fn allowed(segs: &[String]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for r in ROUTES.iter().filter(|r| walk(r, segs, |_, _| {})) {
        if !methods.contains(&r.method) {
            methods.push(r.method);
            if r.method == "GET" {
                methods.push("HEAD");
            }
        }
    }
    methods.join(", ")
}

/// Whether `segs` is a path of `r`; each parameter is reported with the segments it
/// takes.
fn walk(r: &Route, segs: &[String], mut param: impl FnMut(&'static str, Range<usize>)) -> bool {
    let mut template = r.path.split('/').filter(|s| !s.is_empty()).peekable();
    let mut i = 0;
    while let Some(t) = template.next() {
        if i >= segs.len() {
            return false;
        }
        match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) if r.rest && template.peek().is_none() => {
                param(name, i..segs.len());
                return true;
            }
            Some(name) => param(name, i..i + 1),
            None if t == segs[i] => {}
            None => return false,
        }
        i += 1;
    }
    i == segs.len()
}

/// Who a request that matches no route must prove to be before it hears so, by its
/// first segment: an API key under `/v1`, the admin token under `/admin` (so paths
/// cannot be probed without credentials). Anything else is a 404 at once.
pub(crate) fn area(segs: &[String]) -> Access {
    match segs.first().map(String::as_str) {
        Some("v1") => User,
        Some("admin") => Admin,
        _ => Public,
    }
}

/// Health checks are logged at debug: a load balancer polls them every few seconds.
pub(crate) fn is_health(route: &str) -> bool {
    route == "/healthz" || route == "/readyz"
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
