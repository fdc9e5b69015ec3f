//! `GET /openapi.json` against the server it describes, without Python: every route of
//! `routes::ROUTES` is there with its method; the response schemas of representative
//! operations (successes and errors) validate what the daemon really answers, checked
//! by a small validator of the JSON Schema subset the document uses; `Idempotency-Key`
//! is advertised exactly where it works. `tests/schemathesis.sh` is the fuller,
//! optional check (property-based, every operation).

use hyper::Method;
use serde_json::{json, Value};
use spotd::api::routes::{Access, ROUTES};

use crate::common::{cheapest, Daemon};

/// Follows `$ref`s (`#/a/b/c`) within `doc`.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let ptr = r.strip_prefix('#').expect("a local $ref");
        v = doc
            .pointer(ptr)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("unknown type {other}"),
    }
}

/// Validates `v` against `schema` (the subset the document uses: `$ref`, `allOf`,
/// `oneOf`/`anyOf`, `type` (one or a list, `null` for nullable), `const`, `enum`,
/// `properties`, `required`, `additionalProperties`, `items`, `minimum`/`maximum`);
/// answers the first violation with its JSON path.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(doc, schema);
    let fail = |why: String| Err(format!("{at}: {why} (value {v}, schema {s})"));
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            validate(doc, sub, v, at)?;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let n = alts
                .iter()
                .filter(|a| validate(doc, a, v, at).is_ok())
                .count();
            if n == 0 || (key == "oneOf" && n > 1) {
                return fail(format!("{n} branches of {key} match"));
            }
        }
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return fail(format!("not {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            return fail(format!("none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return fail(format!("not the const {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return fail("not in the enum".into());
        }
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
            || s.get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n > m)
        {
            return fail("out of range".into());
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap()) {
                return fail(format!("required {r} missing"));
            }
        }
        for (k, x) in obj {
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(p), _) => validate(doc, p, x, &format!("{at}.{k}"))?,
                (None, Some(Value::Bool(false))) => return fail(format!("{k} not allowed")),
                (None, Some(extra @ Value::Object(_))) => {
                    validate(doc, extra, x, &format!("{at}.{k}"))?
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The documented JSON schema of `method template`'s answer with `status` (or the
/// operation's `default`).
fn response_schema<'a>(doc: &'a Value, method: &str, template: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][template][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {template} is not documented");
    let responses = &op["responses"];
    let r = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| panic!("{method} {template}: {status} not documented"));
    let r = resolve(doc, r);
    &r["content"]["application/json"]["schema"]
}

struct Checker {
    d: Daemon,
    doc: Value,
}

impl Checker {
    /// Calls `method path` and checks the answer against what the document says of
    /// `template` with the answer's status; answers the body.
    async fn check(
        &self,
        method: Method,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let r = self.d.call(method.clone(), path, key, body).await;
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        let schema = response_schema(&self.doc, method.as_str(), template, r.status);
        if let Err(e) = validate(&self.doc, schema, &r.body, "$") {
            panic!(
                "{method} {path} answered {} against its schema: {e}",
                r.status
            );
        }
        r.body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_idempotency_key_only_where_it_works() {
    let d = Daemon::in_process("").await;
    let r = d.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} undocumented",
            route.method,
            route.path
        );
        let responses = op["responses"].as_object().unwrap();
        assert!(
            // `GET /` only ever redirects (a browser to the console).
            responses
                .keys()
                .any(|k| k.starts_with('2') || k.starts_with('3')),
            "{} {}: no success response",
            route.method,
            route.path
        );
        assert!(responses.contains_key("default"));
        if route.access != Access::Public {
            for code in ["400", "401", "404", "429"] {
                let e = resolve(&doc, &responses[code]);
                assert_eq!(
                    e["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{} {} {code}",
                    route.method,
                    route.path
                );
            }
        }
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let advertised = params.contains(&"Idempotency-Key");
        let honoured = matches!(
            (route.method, route.path),
            ("POST", "/v1/gpus/rentals")
                | ("POST", "/admin/v1/accounts")
                | ("POST", "/admin/v1/accounts/{id}/credits")
                | ("POST", "/admin/v1/accounts/{id}/keys")
        );
        assert_eq!(advertised, honoured, "{} {}", route.method, route.path);
        assert_eq!(responses.contains_key("422"), honoured, "{}", route.path);
    }

    // Where it is advertised it works: the same key with another body is a 422.
    let (acct, _) = d.account("idem", "1").await;
    let path = format!("/admin/v1/accounts/{acct}/credits");
    let send = |amount: &str| {
        let body = format!("{{\"amount\": {amount}}}").into_bytes();
        d.call_h(
            Method::POST,
            &path,
            Some(&d.admin),
            &[("Idempotency-Key", "k-1")],
            Some(body),
        )
    };
    assert_eq!(send("2").await.status, 200);
    let again = send("2").await;
    assert_eq!(again.status, 200);
    let other = send("3").await;
    assert_eq!(other.status, 422, "{:?}", other.body);
    let schema = response_schema(&doc, "POST", "/admin/v1/accounts/{id}/credits", 422);
    validate(&doc, schema, &other.body, "$").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_schemas_validate_real_answers() {
    let d = Daemon::in_process("").await;
    let doc = d.call(Method::GET, "/openapi.json", None, None).await.body;
    let c = Checker { d, doc };
    let (admin, key) = (c.d.admin.clone(), c.d.demo_key.clone());
    let (a, k) = (Some(admin.as_str()), Some(key.as_str()));
    use Method as M;

    // The checker is not a rubber stamp: a secret typed as a number fails.
    let bad = json!({"id": "key_1", "object": "api_key", "account_id": "a", "prefix": "p",
        "created_at": "2026-01-01T00:00:00Z", "revoked_at": null, "key": 5});
    let s = &c.doc["components"]["schemas"]["ApiKey"];
    assert!(validate(&c.doc, s, &bad, "$").is_err());
    let missing = json!({"error": {"message": "m", "type": "t"}});
    assert!(validate(
        &c.doc,
        response_schema(&c.doc, "GET", "/v1/credits", 401),
        &missing,
        "$"
    )
    .is_err());

    c.check(M::GET, "/healthz", "/healthz", None, None, 200)
        .await;
    c.check(
        M::GET,
        "/v1/gpus/offers",
        "/v1/gpus/offers?limit=5",
        k,
        None,
        200,
    )
    .await;
    c.check(
        M::GET,
        "/v1/gpus/offers",
        "/v1/gpus/offers?limit=0",
        k,
        None,
        400,
    )
    .await;
    c.check(
        M::GET,
        "/v1/gpus/offers",
        "/v1/gpus/offers",
        None,
        None,
        401,
    )
    .await;
    c.check(
        M::GET,
        "/v1/gpus/offers/{id}",
        "/v1/gpus/offers/nope:1",
        k,
        None,
        404,
    )
    .await;
    c.check(M::GET, "/v1/gpus/prices", "/v1/gpus/prices", k, None, 200)
        .await;
    c.check(M::GET, "/v1/models", "/v1/models", k, None, 200)
        .await;
    c.check(M::GET, "/v1/credits", "/v1/credits", k, None, 200)
        .await;

    let offer = cheapest(&c.d, &key, "").await;
    let body = json!({"offer_id": offer["id"], "name": "doc"});
    let r = c
        .check(
            M::POST,
            "/v1/gpus/rentals",
            "/v1/gpus/rentals",
            k,
            Some(body),
            201,
        )
        .await;
    let rid = r["id"].as_str().unwrap().to_string();
    let one = format!("/v1/gpus/rentals/{rid}");
    c.check(M::GET, "/v1/gpus/rentals/{id}", &one, k, None, 200)
        .await;
    c.check(M::GET, "/v1/gpus/rentals", "/v1/gpus/rentals", k, None, 200)
        .await;
    c.check(M::DELETE, "/v1/gpus/rentals/{id}", &one, k, None, 200)
        .await;
    c.check(
        M::GET,
        "/v1/credits/ledger",
        "/v1/credits/ledger",
        k,
        None,
        200,
    )
    .await;
    let unknown = json!({"model": "no/such-model", "messages": []});
    let chat = "/v1/chat/completions";
    c.check(M::POST, chat, chat, k, Some(unknown), 404).await;
    // A cold model: 202 with the Deploying body; streamed, a 503 OpenAI error.
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cold = json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": msgs});
    let dep = c
        .check(M::POST, chat, chat, k, Some(cold.clone()), 202)
        .await;
    assert_eq!(dep["status"], "deploying");
    let mut streamed = cold;
    streamed["stream"] = json!(true);
    let e = c.check(M::POST, chat, chat, k, Some(streamed), 503).await;
    assert_eq!(e["error"]["code"], "model_deploying");
    c.check(M::GET, "/readyz", "/readyz", None, None, 200).await;

    // Admin: accounts and keys, whose secret is null everywhere but at creation.
    let body = json!({"name": "doc", "credit": 5});
    let acct = c
        .check(
            M::POST,
            "/admin/v1/accounts",
            "/admin/v1/accounts",
            a,
            Some(body),
            201,
        )
        .await;
    assert!(acct["api_key"]["key"].is_string());
    let id = acct["id"].as_str().unwrap().to_string();
    let keys = format!("/admin/v1/accounts/{id}/keys");
    let nk = c
        .check(M::POST, "/admin/v1/accounts/{id}/keys", &keys, a, None, 201)
        .await;
    assert!(nk["key"].is_string());
    let got = c
        .check(
            M::GET,
            "/admin/v1/accounts/{id}",
            &format!("/admin/v1/accounts/{id}"),
            a,
            None,
            200,
        )
        .await;
    let listed = got["api_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k["key"].is_null()), "{got}");
    let revoke = format!("/admin/v1/keys/{}", nk["id"].as_str().unwrap());
    let gone = c
        .check(M::DELETE, "/admin/v1/keys/{key_id}", &revoke, a, None, 200)
        .await;
    assert!(gone["key"].is_null() && gone["revoked_at"].is_string());
    let credit = json!({"amount": 1.5, "note": "doc"});
    let credits = format!("/admin/v1/accounts/{id}/credits");
    let t = "/admin/v1/accounts/{id}/credits";
    c.check(M::POST, t, &credits, a, Some(credit), 200).await;
    c.check(M::POST, t, &credits, a, Some(json!({"amount": "x"})), 400)
        .await;
    c.check(
        M::GET,
        "/admin/v1/accounts",
        "/admin/v1/accounts",
        a,
        None,
        200,
    )
    .await;
    c.check(
        M::GET,
        "/admin/v1/providers",
        "/admin/v1/providers",
        a,
        None,
        200,
    )
    .await;
    c.check(
        M::GET,
        "/admin/v1/rentals",
        "/admin/v1/rentals",
        a,
        None,
        200,
    )
    .await;
    let hook = json!({"url": "http://127.0.0.1:9/h", "events": ["*"]});
    let w = "/admin/v1/webhooks";
    c.check(M::POST, w, w, a, Some(hook), 201).await;
    c.check(M::GET, w, w, a, None, 200).await;
}

/// Found by schemathesis: credits of many accounts that each fit but together overflow
/// the daemon's running credit total made the store's writer panic (500s, and in a
/// release build a wrapped total). Now the credit that would overflow it is a 400 and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_that_would_overflow_the_daemons_total_are_a_400() {
    let d = Daemon::in_process("").await;
    let doc = d.call(Method::GET, "/openapi.json", None, None).await.body;
    let c = Checker { d, doc };
    let a = Some(c.d.admin.as_str());
    let t = "/admin/v1/accounts";
    let big = || Some(json!({"name": "rich", "credit": 999_999_999_999u64}));
    // i64 micro-USD holds 9,223,372 million USD: nine of these fit with the demo's 100.
    for _ in 0..9 {
        c.check(Method::POST, t, t, a, big(), 201).await;
    }
    let e = c.check(Method::POST, t, t, a, big(), 400).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{e}"
    );
    let list = c.check(Method::GET, t, t, a, None, 200).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        10,
        "nothing written"
    );
    // Credit through the other door too, and the store still writes.
    let id = list["data"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/admin/v1/accounts/{id}/credits");
    let ct = "/admin/v1/accounts/{id}/credits";
    let big = Some(json!({"amount": 999_999_999_999u64}));
    c.check(Method::POST, ct, &path, a, big, 400).await;
    let small = Some(json!({"amount": 1}));
    c.check(Method::POST, ct, &path, a, small, 200).await;
}
