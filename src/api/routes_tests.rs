//! Tests of the route table (`routes.rs`).

use super::*;
use std::collections::BTreeSet;

fn segs(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn label(method: &str, path: &str) -> &'static str {
    find(method, &segs(path)).label()
}

/// A request path built from `r`'s template: each `{name}` becomes `v_name`, and
/// a rest parameter takes two segments. Returns the path and the parameters the
/// route should see.
fn concrete(r: &Route) -> (String, Vec<(&'static str, String)>) {
    let mut params = Vec::new();
    let path = r
        .path
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let v = if r.rest {
                        format!("org/v_{name}")
                    } else {
                        format!("v_{name}")
                    };
                    params.push((name, v.clone()));
                    v
                }
                None => s.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/");
    (path, params)
}

#[test]
fn every_route_dispatches_to_itself_with_its_parameters() {
    for r in ROUTES {
        let (path, params) = concrete(r);
        match find(r.method, &segs(&path)) {
            Lookup::Found(got, p) => {
                assert!(
                    std::ptr::eq(got, r),
                    "{} {path} went to {} {}",
                    r.method,
                    got.method,
                    got.path
                );
                assert_eq!(p, Params(params), "{} {}", r.method, r.path);
            }
            other => panic!("{} {path}: {other:?}", r.method),
        }
    }
}

#[test]
fn a_known_path_with_another_method_keeps_the_first_routes_template() {
    for r in ROUTES {
        let (path, _) = concrete(r);
        match find("PUT", &segs(&path)) {
            Lookup::OtherMethod(got) => {
                let first = ROUTES.iter().find(|x| x.path == r.path).unwrap();
                assert!(std::ptr::eq(got, first), "{}", r.path);
            }
            other => panic!("PUT {path}: {other:?}"),
        }
    }
}

#[test]
fn templates_never_carry_ids() {
    assert_eq!(
        label("GET", "/v1/gpus/rentals/rnt_123"),
        "/v1/gpus/rentals/{id}"
    );
    assert_eq!(
        label("POST", "/v1/gpus/rentals/rnt_1/activity"),
        "/v1/gpus/rentals/{id}/activity"
    );
    assert_eq!(label("GET", "/v1/gpus/rentals"), "/v1/gpus/rentals");
    assert_eq!(
        label("DELETE", "/admin/v1/keys/key_9"),
        "/admin/v1/keys/{key_id}"
    );
    assert_eq!(label("PUT", "/v1/credits"), "/v1/credits");
    assert_eq!(label("HEAD", "/healthz"), "/healthz");
    assert_eq!(label("GET", "/v1/nope/rnt_1"), UNMATCHED);
    assert_eq!(label("GET", "/v1/gpus/rentals/a/b/c"), UNMATCHED);
    assert_eq!(label("GET", "/"), "/");
    assert_eq!(label("GET", "/console/"), "/console");
    assert_eq!(label("GET", "/console/app.js"), "/console/{file}");
    assert_eq!(label("GET", "/metrics/foo"), UNMATCHED);
}

#[test]
fn a_model_id_takes_the_rest_of_the_path() {
    let id = |p: &str| match find("GET", &segs(p)) {
        Lookup::Found(r, params) => {
            assert_eq!(r.path, "/v1/models/{id}");
            params.get("id").unwrap().to_string()
        }
        other => panic!("{p}: {other:?}"),
    };
    assert_eq!(
        id("/v1/models/meta-llama/Llama-3.1-8B-Instruct"),
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    assert_eq!(id("/v1/models/a/b/c"), "a/b/c");
    assert_eq!(id("/v1/models/x"), "x");
    // A decoded `%2F` is one segment with a slash in it: the same id.
    assert_eq!(
        find("GET", &["v1".into(), "models".into(), "a/b".into()]).label(),
        "/v1/models/{id}"
    );
    // `/v1/models/` is the list.
    assert_eq!(label("GET", "/v1/models/"), "/v1/models");
    assert_eq!(label("DELETE", "/v1/models/a/b"), "/v1/models/{id}");
}

#[test]
fn head_is_get_and_allow_lists_every_method_of_a_path() {
    assert!(matches!(find("HEAD", &segs("/healthz")), Lookup::Found(r, _) if r.method == "GET"));
    assert_eq!(allowed(&segs("/healthz")), "GET, HEAD");
    assert_eq!(allowed(&segs("/v1/gpus/rentals")), "POST, GET, HEAD");
    assert_eq!(
        allowed(&segs("/v1/gpus/rentals/rnt_1")),
        "GET, HEAD, DELETE"
    );
    assert_eq!(allowed(&segs("/v1/chat/completions")), "POST");
    assert_eq!(allowed(&segs("/nope")), "");
}

#[test]
fn no_duplicate_routes() {
    let set: BTreeSet<_> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(set.len(), ROUTES.len());
}

/// A request that matches nothing is authenticated as the routes around it are.
#[test]
fn every_route_under_an_area_has_its_access() {
    for r in ROUTES {
        let s = segs(r.path);
        let first = s.first().map(String::as_str);
        if matches!(first, Some("v1" | "admin")) {
            assert_eq!(area(&s), r.access, "{} {}", r.method, r.path);
        } else if first == Some("console") {
            // The console's files are public, as the rest of the console area is.
            assert_eq!((area(&s), r.access), (Public, Public), "{}", r.path);
        } else {
            assert!(
                s.len() <= 1,
                "{}: a new area needs a rule in area()",
                r.path
            );
        }
        assert!(!r.rest || r.path.ends_with('}'), "{}", r.path);
    }
}
