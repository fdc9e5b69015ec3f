//! The table of every route the API serves, and the one function that maps a request
//! to its route template.
//!
//! The template (`/v1/gpus/rentals/{id}`) is what logs and metrics name a request by:
//! raw paths carry ids, which would make one metric series per object. The same table
//! generates the OpenAPI document's paths, and tests hold it to the routes actually
//! served (a scan of the handlers' match arms, and calls to a real daemon).

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Admin,
}

#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
    }
}

use Access::{Admin, Public, User};

/// Every route, in the order the OpenAPI document lists them.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", Public, "Liveness: the process answers"),
    r("GET", "/readyz", Public, "Readiness: the store answers"),
    r("GET", "/openapi.json", Public, "This OpenAPI document"),
    r(
        "GET",
        "/metrics",
        Admin,
        "Prometheus metrics (text exposition format)",
    ),
    r("GET", "/v1/gpus/offers", User, "List GPU offers"),
    r("GET", "/v1/gpus/offers/{id}", User, "One GPU offer"),
    r(
        "POST",
        "/v1/gpus/rentals",
        User,
        "Rent a GPU: an offer by id, or the cheapest match",
    ),
    r("GET", "/v1/gpus/rentals", User, "List your rentals"),
    r("GET", "/v1/gpus/rentals/{id}", User, "One of your rentals"),
    r(
        "DELETE",
        "/v1/gpus/rentals/{id}",
        User,
        "Tear a rental down",
    ),
    r(
        "POST",
        "/v1/gpus/rentals/{id}/activity",
        User,
        "Mark a rental used (resets its idle clock)",
    ),
    r("GET", "/v1/models", User, "Models and their availability"),
    r(
        "GET",
        "/v1/models/{id}",
        User,
        "One model and its availability",
    ),
    r(
        "POST",
        "/v1/chat/completions",
        User,
        "OpenAI-compatible chat completion",
    ),
    r(
        "POST",
        "/v1/completions",
        User,
        "OpenAI-compatible text completion",
    ),
    r(
        "POST",
        "/v1/embeddings",
        User,
        "OpenAI-compatible embeddings",
    ),
    r("GET", "/v1/credits", User, "Your credit balance"),
    r(
        "GET",
        "/v1/credits/ledger",
        User,
        "Your ledger entries, newest first",
    ),
    r(
        "POST",
        "/admin/v1/accounts",
        Admin,
        "Create an account (its first API key is shown once)",
    ),
    r("GET", "/admin/v1/accounts", Admin, "List accounts"),
    r(
        "GET",
        "/admin/v1/accounts/{id}",
        Admin,
        "One account with its API keys",
    ),
    r(
        "POST",
        "/admin/v1/accounts/{id}/credits",
        Admin,
        "Add credit to an account",
    ),
    r(
        "POST",
        "/admin/v1/accounts/{id}/keys",
        Admin,
        "Create another API key for an account",
    ),
    r(
        "DELETE",
        "/admin/v1/keys/{key_id}",
        Admin,
        "Revoke an API key",
    ),
    r(
        "GET",
        "/admin/v1/providers",
        Admin,
        "Provider status: offers, last refresh, last error",
    ),
    r("GET", "/admin/v1/rentals", Admin, "List every rental"),
    r("GET", "/admin/v1/rentals/{id}", Admin, "Any rental"),
    r(
        "DELETE",
        "/admin/v1/rentals/{id}",
        Admin,
        "Tear any rental down",
    ),
];

/// Label for a request that matches no route (bounded: one label for all of them).
pub const UNMATCHED: &str = "unmatched";

/// Routes whose last parameter takes the rest of the path: model ids like
/// `meta-llama/Llama-3.1-8B-Instruct` contain a slash, and the OpenAI SDKs put the id
/// in the path as it is (`/v1/models/meta-llama/Llama-3.1-8B-Instruct`).
const GREEDY_LAST: &[&str] = &["/v1/models/{id}"];

fn matches(template: &str, segs: &[String]) -> bool {
    if GREEDY_LAST.contains(&template) {
        let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
        let fixed = t.len() - 1;
        return segs.len() > fixed && t[..fixed].iter().zip(segs).all(|(p, s)| p == s);
    }
    let mut t = template.split('/').filter(|s| !s.is_empty());
    let mut n = 0;
    for s in segs {
        match t.next() {
            Some(p) if p.starts_with('{') => {}
            Some(p) if p == s => {}
            _ => return false,
        }
        n += 1;
    }
    t.next().is_none() && n == segs.len()
}

/// The template of the route `segs` (the decoded path segments) belongs to. A known
/// path with another method keeps its template (the answer is a 404 there, but the
/// label is still bounded); anything else is [`UNMATCHED`].
pub fn template(method: &str, segs: &[String]) -> &'static str {
    let mut path_only = None;
    for r in ROUTES {
        if matches(r.path, segs) {
            if r.method == method {
                return r.path;
            }
            path_only.get_or_insert(r.path);
        }
    }
    path_only.unwrap_or(UNMATCHED)
}

/// Health checks are logged at debug: a load balancer polls them every few seconds.
pub fn is_health(route: &str) -> bool {
    route == "/healthz" || route == "/readyz"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn segs(p: &str) -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn templates_never_carry_ids() {
        assert_eq!(
            template("GET", &segs("/v1/gpus/rentals/rnt_123")),
            "/v1/gpus/rentals/{id}"
        );
        assert_eq!(
            template("POST", &segs("/v1/gpus/rentals/rnt_1/activity")),
            "/v1/gpus/rentals/{id}/activity"
        );
        assert_eq!(
            template("GET", &segs("/v1/gpus/rentals")),
            "/v1/gpus/rentals"
        );
        assert_eq!(
            template("DELETE", &segs("/admin/v1/keys/key_9")),
            "/admin/v1/keys/{key_id}"
        );
        assert_eq!(template("PUT", &segs("/v1/credits")), "/v1/credits");
        assert_eq!(template("GET", &segs("/v1/nope/rnt_1")), UNMATCHED);
        assert_eq!(template("GET", &segs("/v1/gpus/rentals/a/b/c")), UNMATCHED);
        assert_eq!(template("GET", &[]), UNMATCHED);
    }

    #[test]
    fn no_duplicate_routes() {
        let set: BTreeSet<_> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
        assert_eq!(set.len(), ROUTES.len());
    }

    /// `(&Method::GET, ["gpus", "offers", id])` arms in `src/api/*.rs`, as
    /// (method, path with `{}` for bound segments). Arms in `handlers.rs`-style files
    /// match on the segments after `v1` unless they start with "admin"; the router's
    /// match full paths.
    fn served_by_source() -> BTreeSet<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".rs") || name == "routes.rs" {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            let full_paths = name == "router.rs";
            let mut rest = src.as_str();
            while let Some(i) = rest.find("(&Method::") {
                rest = &rest[i + "(&Method::".len()..];
                let Some(comma) = rest.find(',') else { break };
                let method = rest[..comma].trim().to_string();
                let after = rest[comma + 1..].trim_start();
                let Some(body) = after.strip_prefix('[') else {
                    continue;
                };
                let Some(end) = body.find(']') else { break };
                let parts: Vec<String> = body[..end]
                    .split(',')
                    .map(|p| p.trim())
                    .filter(|p| !p.is_empty())
                    .map(
                        |p| match p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                            Some(lit) => lit.to_string(),
                            None => "{}".to_string(),
                        },
                    )
                    .collect();
                let prefix = if full_paths || parts.first().map(String::as_str) == Some("admin") {
                    ""
                } else {
                    "/v1"
                };
                out.insert((method, format!("{prefix}/{}", parts.join("/"))));
            }
        }
        out
    }

    fn normalized(p: &str) -> String {
        p.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_route_the_handlers_serve_is_in_the_table() {
        let documented: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), normalized(r.path)))
            .collect();
        let served = served_by_source();
        // The scan must find the routes, or this test would pass vacuously.
        assert!(
            served.contains(&("GET".into(), "/v1/gpus/offers".into())),
            "{served:?}"
        );
        assert!(
            served.contains(&("DELETE".into(), "/admin/v1/keys/{}".into())),
            "{served:?}"
        );
        assert!(
            served.contains(&("GET".into(), "/healthz".into())),
            "{served:?}"
        );
        let missing: Vec<_> = served.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "served but missing from api::routes::ROUTES (and so from /openapi.json): {missing:?}"
        );
    }
}
