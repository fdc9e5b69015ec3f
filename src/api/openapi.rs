//! `GET /openapi.json`: an OpenAPI 3.1 document of the whole API.
//!
//! Paths and methods come from [`routes::ROUTES`], the table the router dispatches
//! through, so the document cannot list a route that does not exist or miss one that
//! does. Bodies and schemas are written here from the views in `api::views`. Built
//! once, on first request.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::routes::{Access, Route, ROUTES};

/// The document, built on first use.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let item = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = item {
            m.insert(r.method.to_ascii_lowercase(), operation(r));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "spotd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted GPU spot marketplace: aggregate spot offers, rent in one call, exact per-second billing, OpenAI-compatible inference with cold starts. Money is USD as JSON numbers with at most 6 decimals; times are RFC 3339 UTC; errors have the OpenAI shape.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"}
        },
        "paths": paths,
        "components": components(),
    })
}

fn operation_id(r: &Route) -> String {
    let mut id = r.method.to_ascii_lowercase();
    for s in r.path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(s.chars().filter(|c| *c != '{' && *c != '}').map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    id
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(s: Value) -> Value {
    json!({"application/json": {"schema": s}})
}

fn ok(desc: &str, s: Value) -> Value {
    json!({"description": desc, "content": json_content(s)})
}

fn list_of(name: &str) -> Value {
    json!({"allOf": [schema("List"), {"properties": {"data": {"type": "array", "items": schema(name)}}}]})
}

fn query(name: &str, ty: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}, "description": desc})
}

fn operation(r: &Route) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), r.summary.into());
    op.insert("operationId".into(), operation_id(r).into());
    let tag = match r.access {
        Access::Public => "service",
        Access::Admin => "admin",
        Access::User => "user",
    };
    op.insert("tags".into(), json!([tag]));
    let security = match r.access {
        Access::Public => json!([]),
        Access::User => json!([{"apiKey": []}]),
        Access::Admin => json!([{"adminToken": []}]),
    };
    op.insert("security".into(), security);

    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let (body, responses) = details(r, &mut params);
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(b) = body {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": json_content(b)}),
        );
    }
    let mut resp = match responses {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for code in error_statuses(r) {
        resp.entry(code.to_string())
            .or_insert_with(|| json!({"$ref": format!("#/components/responses/E{code}")}));
    }
    if idempotent(r) {
        let mut p = op
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        p.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
            "description": "Same key and body within 24 h returns the stored response; another body gives 422."}));
        op.insert("parameters".into(), Value::Array(p));
    }
    resp.insert(
        "default".into(),
        json!({"$ref": "#/components/responses/Error"}),
    );
    op.insert("responses".into(), Value::Object(resp));
    Value::Object(op)
}

/// The routes whose handler runs through `router::idempotent`: only they honour an
/// `Idempotency-Key` (inference, webhooks and activity ignore it, so it is not
/// advertised there).
pub(crate) fn idempotent(r: &Route) -> bool {
    matches!(
        (r.method, r.path),
        ("POST", "/v1/gpus/rentals")
            | ("POST", "/admin/v1/accounts")
            | ("POST", "/admin/v1/accounts/{id}/credits")
            | ("POST", "/admin/v1/accounts/{id}/keys")
    )
}

fn inference(r: &Route) -> bool {
    matches!(
        r.path,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
    )
}

/// The error statuses a route can answer (each with the OpenAI error body); anything
/// else falls under `default`. A 405 is the answer of a method no route of the path
/// serves, so it is described in `components.responses` but belongs to no operation.
fn error_statuses(r: &Route) -> Vec<u16> {
    let mut codes = vec![431];
    if r.access == Access::Public {
        if r.path == "/readyz" {
            codes.push(503);
        }
        return codes;
    }
    codes.extend([400, 401, 404, 429]);
    if r.body {
        codes.push(413);
    }
    if r.method != "GET" {
        codes.push(409);
    }
    if idempotent(r) {
        codes.push(422);
    }
    if r.path == "/v1/gpus/rentals" && r.method == "POST" || inference(r) {
        codes.extend([402, 503]);
    }
    if inference(r) {
        codes.extend([502, 504]);
    }
    codes.sort_unstable();
    codes
}

/// The request body of an inference route: OpenAI's, the fields spotd reads typed;
/// every other field is passed through to the model server as it is.
fn inference_body(path: &str) -> Value {
    let text_or_list =
        json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]});
    let (required, specific) = match path {
        "/v1/chat/completions" => (
            json!(["model", "messages"]),
            json!({"messages": {"type": "array", "items": {"type": "object", "required": ["role"],
                "properties": {"role": {"type": "string"}, "content": {"oneOf": [{"type": "string"}, {"type": "null"},
                    {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}}]}}}}}),
        ),
        "/v1/completions" => (json!(["model", "prompt"]), json!({"prompt": text_or_list})),
        _ => (
            json!(["model", "input"]),
            json!({"input": {"description": "A string, an array of strings, an array of token ids, or an array of arrays of token ids (none empty)",
                    "oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                        {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}}]},
                "dimensions": {"type": "integer", "minimum": 1}}),
        ),
    };
    let mut props = json!({"model": {"type": "string"}, "stream": {"type": "boolean"}});
    if let (Value::Object(p), Value::Object(extra)) = (&mut props, specific) {
        p.extend(extra);
    }
    json!({"type": "object", "required": required, "properties": props})
}

/// Request body schema and success responses of one route.
fn details(r: &Route, params: &mut Vec<Value>) -> (Option<Value>, Value) {
    match (r.method, r.path) {
        ("GET", "/healthz") => (
            None,
            json!({"200": ok("Alive", json!({"type": "object", "properties": {"status": {"const": "ok"}}}))}),
        ),
        ("GET", "/readyz") => (
            None,
            json!({"200": ok("Ready", json!({"type": "object", "properties": {"status": {"const": "ready"}, "offers": {"type": "integer"}}})), "503": {"$ref": "#/components/responses/Error"}}),
        ),
        ("GET", "/openapi.json") => (
            None,
            json!({"200": ok("OpenAPI 3.1 document", json!({"type": "object"}))}),
        ),
        ("GET", "/") => (
            None,
            json!({"302": {"description": "To /console/ (Accept: text/html)"}, "404": {"$ref": "#/components/responses/Error"}}),
        ),
        ("GET", "/console") | ("GET", "/console/{file}") => (
            None,
            json!({"200": {"description": "The web console's page, stylesheet or script", "content": {"text/html": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}}}}, "404": {"$ref": "#/components/responses/Error"}}),
        ),
        ("GET", "/console/config.json") => (
            None,
            json!({"200": ok("Console settings", json!({"type": "object", "properties": {"min_session_seconds": {"type": "integer"}, "version": {"type": "string"}}}))}),
        ),
        ("GET", "/metrics") => (
            None,
            json!({"200": {"description": "Prometheus text exposition format 0.0.4", "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}}),
        ),
        ("GET", "/v1/gpus/offers") => {
            params.extend([
                query("gpu", "string", "GPU model, case-insensitive (\"h100\", \"RTX 4090\")"),
                query("gpu_count", "integer", "Exactly this many GPUs"),
                query("min_gpu_count", "integer", "At least this many GPUs"),
                query("min_vram_gb", "integer", "Per GPU"),
                query("max_price", "number", "USD per hour, whole machine"),
                query("provider", "string", "Provider name"),
                query("region", "string", "Region"),
                query("interruptible", "boolean", "Spot (true) or not"),
                json!({"name": "sort", "in": "query", "required": false, "schema": {"enum": ["price", "-price", "price_per_gpu", "reliability", "-vram_gb"], "default": "price"}}),
                json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}),
                query("cursor", "string", "next_cursor of the previous page"),
            ]);
            (
                None,
                json!({"200": ok("A page of offers", list_of("Offer"))}),
            )
        }
        ("GET", "/v1/gpus/prices") => {
            params.extend([
                query("gpu", "string", "GPU model, case-insensitive (\"h100\" matches every H100 model)"),
                query("provider", "string", "One provider's rows; without it, one row per interval over every provider (provider null)"),
                query("interruptible", "boolean", "Spot (true) or on-demand (false) rows only"),
                json!({"name": "interval", "in": "query", "required": false, "schema": {"enum": ["1h", "1d"], "default": "1h"}}),
                query("since", "string", "RFC 3339, or a time ago: 90m, 24h, 7d (default: 24h before until for 1h, 30d for 1d)"),
                query("until", "string", "RFC 3339, or a time ago (default: now); rows start before it"),
                json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}),
                query("cursor", "string", "next_cursor of the previous page"),
            ]);
            (
                None,
                json!({"200": ok("Price history rows, oldest first", list_of("PriceRow"))}),
            )
        }
        ("GET", "/v1/gpus/offers/{id}") => (None, json!({"200": ok("The offer", schema("Offer"))})),
        ("POST", "/v1/gpus/rentals") => (
            Some(schema("RentRequest")),
            json!({"201": ok("The rental", schema("Rental"))}),
        ),
        ("GET", "/v1/gpus/rentals") | ("GET", "/admin/v1/rentals") => {
            params.push(json!({"name": "state", "in": "query", "required": false, "schema": schema("RentalState")}));
            if r.access == Access::Admin {
                params.push(query("account", "string", "Only this account's rentals"));
            }
            (None, json!({"200": ok("Rentals", list_of("Rental"))}))
        }
        ("GET", _) if r.path.ends_with("/rentals/{id}") => {
            (None, json!({"200": ok("The rental", schema("Rental"))}))
        }
        ("DELETE", _) if r.path.ends_with("/rentals/{id}") => (
            None,
            json!({"200": ok("The rental, terminating or terminated", schema("Rental"))}),
        ),
        ("POST", "/v1/gpus/rentals/{id}/activity") => {
            (None, json!({"200": ok("The rental", schema("Rental"))}))
        }
        ("GET", "/v1/models") => (None, json!({"200": ok("Models", list_of("Model"))})),
        ("POST", "/v1/chat/completions")
        | ("POST", "/v1/completions")
        | ("POST", "/v1/embeddings") => {
            params.push(json!({"name": "Prefer", "in": "header", "required": false, "schema": {"type": "string", "examples": ["wait=600"]},
                "description": "RFC 7240 wait=N: hold the request open up to N seconds (at most 900) while a cold model deploys."}));
            (
                Some(inference_body(r.path)),
                json!({
                    "200": {"description": "The OpenAI-compatible answer (server-sent events when stream is true)",
                            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                    "202": {"description": "The model is being deployed on a spot GPU; retry after Retry-After seconds",
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": json_content(schema("Deploying"))}
                }),
            )
        }
        ("GET", "/v1/credits") => (None, json!({"200": ok("Balance", schema("Credits"))})),
        ("GET", "/v1/credits/ledger") => {
            params.push(json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}));
            params.push(query(
                "cursor",
                "string",
                "next_cursor of the previous page",
            ));
            (
                None,
                json!({"200": ok("Ledger entries", list_of("LedgerEntry"))}),
            )
        }
        ("POST", "/admin/v1/accounts") => (
            Some(
                json!({"type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100,
                    "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$", "description": "1 to 100 characters (not bytes) once trimmed, no control characters"},
                    "credit": {"allOf": [schema("UsdIn")], "description": "Opening credit, not negative (default 0)"}}}),
            ),
            json!({"201": ok("The account with its first API key (the secret is shown only here)", schema("Account"))}),
        ),
        ("GET", "/admin/v1/accounts") => (None, json!({"200": ok("Accounts", list_of("Account"))})),
        ("GET", "/admin/v1/accounts/{id}") => (
            None,
            json!({"200": ok("The account and its keys", schema("Account"))}),
        ),
        ("PATCH", "/admin/v1/accounts/{id}") => (
            Some(
                json!({"type": "object", "additionalProperties": false, "minProperties": 1,
                "properties": {"max_usd_per_hour": {"type": ["number", "null"], "minimum": 0},
                    "max_usd_per_month": {"type": ["number", "null"], "minimum": 0}},
                "description": "Each cap: a USD amount sets it, null clears it, absent leaves it."}),
            ),
            json!({"200": ok("The account with its caps", schema("Account"))}),
        ),
        ("POST", "/admin/v1/accounts/{id}/credits") => (
            Some(
                json!({"type": "object", "required": ["amount"], "additionalProperties": false,
                "properties": {"amount": schema("UsdIn"), "note": {"type": "string", "maxLength": 500}}}),
            ),
            json!({"200": ok("The account and the new ledger entry", schema("Account"))}),
        ),
        ("POST", "/admin/v1/accounts/{id}/keys") => (
            None,
            json!({"201": ok("The key; its secret is shown only here", schema("ApiKey"))}),
        ),
        ("DELETE", "/admin/v1/keys/{key_id}") => (
            None,
            json!({"200": ok("The revoked key", schema("ApiKey"))}),
        ),
        ("GET", "/admin/v1/providers") => (
            None,
            json!({"200": ok("Providers", list_of("ProviderStatus"))}),
        ),
        ("POST", "/admin/v1/webhooks") => (
            Some(
                json!({"type": "object", "required": ["url", "events"], "additionalProperties": false,
                "properties": {"url": {"type": "string", "format": "uri", "description": "http:// or https://"},
                    "events": {"type": "array", "items": schema("EventType")},
                    "description": {"type": "string", "maxLength": 500}}}),
            ),
            json!({"201": ok("The endpoint with its signing secret (shown only here)", schema("Webhook"))}),
        ),
        ("GET", "/admin/v1/webhooks") => (
            None,
            json!({"200": ok("Webhook endpoints", list_of("Webhook"))}),
        ),
        ("DELETE", "/admin/v1/webhooks/{id}") => (
            None,
            json!({"200": ok("Deleted", json!({"type": "object", "properties": {"id": {"type": "string"}, "deleted": {"const": true}}}))}),
        ),
        ("GET", "/admin/v1/webhooks/{id}/deliveries") => {
            params.push(json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}));
            params.push(query(
                "cursor",
                "string",
                "next_cursor of the previous page",
            ));
            (
                None,
                json!({"200": ok("Deliveries, newest first", list_of("WebhookDelivery"))}),
            )
        }
        _ => (None, json!({"200": ok("OK", json!({"type": "object"}))})),
    }
}

/// One response per error status, each an OpenAI-shaped error body.
fn error_responses() -> Value {
    let mut m = Map::new();
    let err = |desc: &str| json!({"description": desc, "content": json_content(schema("Error"))});
    m.insert("Error".into(), err("An error in the OpenAI shape"));
    for (code, desc) in [
        (400, "Bad JSON or a bad parameter (param names it)"),
        (401, "Missing or wrong API key or admin token"),
        (402, "Insufficient credit"),
        (404, "Unknown, or not yours"),
        (
            405,
            "The path does not serve this method; Allow lists the ones it does",
        ),
        (
            409,
            "State conflict: offer gone, price moved above the maximum, already terminated",
        ),
        (413, "Body too large"),
        (422, "Idempotency-Key reused with another body"),
        (429, "Rate limited; retry after Retry-After seconds"),
        (431, "Request headers too large"),
        (502, "The upstream failed"),
        (503, "Not ready, or no provider or offer can serve it now"),
        (504, "The upstream timed out"),
    ] {
        m.insert(format!("E{code}"), err(desc));
    }
    Value::Object(m)
}

fn components() -> Value {
    let usd = json!({"type": "number", "description": "USD, exact, at most 6 decimals"});
    let at = json!({"type": "string", "format": "date-time"});
    let time = json!({"type": ["string", "null"], "format": "date-time"});
    json!({
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "An account's API key"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin token (SPOTD_ADMIN_TOKEN or DATA_DIR/admin.token)"}
        },
        "responses": error_responses(),
        "schemas": {
            "Usd": usd,
            "UsdIn": {"description": "USD, exact: a JSON number (5e-05 is fine) or a decimal string, at most 6 decimals and 12 integer digits",
                "oneOf": [{"type": "number", "minimum": -999_999_999_999.0, "maximum": 999_999_999_999.0},
                    {"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,6})?$"}]},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["message", "type", "code", "param"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}}},
            "List": {"type": "object", "required": ["object", "data"], "properties": {
                "object": {"const": "list"}, "data": {"type": "array"}, "next_cursor": {"type": ["string", "null"]}}},
            "Offer": {"type": "object", "required": ["id", "object", "provider", "gpu", "gpu_count", "price_per_hour", "interruptible", "available"], "properties": {
                "id": {"type": "string", "description": "provider:native_id"}, "object": {"const": "gpu_offer"},
                "provider": {"type": "string"}, "gpu": {"type": "string"}, "gpu_count": {"type": "integer"},
                "vram_gb": {"type": "integer"}, "vcpus": {"type": "integer"}, "ram_gb": {"type": "integer"},
                "disk_gb": {"type": "integer"}, "region": {"type": "string"}, "price_per_hour": usd,
                "price_per_gpu_hour": usd, "on_demand_price_per_hour": {"type": ["number", "null"]},
                "interruptible": {"type": "boolean"}, "reliability": {"type": "number", "minimum": 0, "maximum": 1},
                "available": {"type": "integer"}, "updated_at": at}},
            "PriceRow": {"type": "object", "properties": {
                "gpu": {"type": "string"}, "provider": {"type": ["string", "null"]}, "interruptible": {"type": "boolean"},
                "start": at, "min_price_per_gpu_hour": usd, "median_price_per_gpu_hour": usd,
                "max_price_per_gpu_hour": usd, "offers": {"type": "integer"}, "available": {"type": "integer"}}},
            "RentalState": {"enum": ["provisioning", "running", "terminating", "terminated", "failed", "interrupted"]},
            "Rental": {"type": "object", "required": ["id", "object", "state", "offer", "provider", "price_per_hour", "created_at", "cost", "hold"], "properties": {
                "id": {"type": "string"}, "object": {"const": "gpu_rental"}, "state": schema("RentalState"),
                "offer": schema("Offer"), "provider": {"type": "string"}, "price_per_hour": usd,
                "model": {"type": ["string", "null"]}, "endpoint": {"type": ["string", "null"]},
                "ssh": {"type": ["object", "null"], "properties": {"host": {"type": "string"}, "port": {"type": "integer"}, "user": {"type": "string"}}},
                "created_at": at, "started_at": time, "ended_at": time, "last_activity_at": time,
                "termination_reason": {"enum": ["user", "idle", "max_duration", "insufficient_credit", "preempted", "provision_failed", "provider_error", "admin", "budget_exceeded", "max_cost", null]},
                "max_cost": {"type": ["number", "null"], "description": "USD; the rental is torn down (max_cost) when its cost reaches it"},
                "name": {"type": ["string", "null"]}, "image": {"type": ["string", "null"]},
                "idle_timeout_seconds": {"type": ["integer", "null"]}, "max_duration_seconds": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]}, "cost": usd, "hold": usd}},
            "RentRequest": {"type": "object", "additionalProperties": false,
                "description": "Either offer_id, or criteria that pick the cheapest matching offer.",
                "properties": {
                    "offer_id": {"type": "string"}, "gpu": {"type": "string"}, "gpu_count": {"type": "integer", "minimum": 1, "maximum": 64},
                    "min_gpu_count": {"type": "integer"}, "min_vram_gb": {"type": "integer"}, "max_price_per_hour": usd,
                    "provider": {"type": "string"}, "region": {"type": "string"}, "interruptible": {"type": "boolean"},
                    "image": {"type": "string"}, "name": {"type": "string"}, "ssh_public_key": {"type": "string"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "idle_timeout_seconds": {"type": "integer"}, "max_duration_seconds": {"type": "integer"},
                    "max_cost": usd}},
            "Credits": {"type": "object", "required": ["balance", "held", "available"],
                "properties": {"object": {"const": "credits"}, "balance": usd, "held": usd, "available": usd,
                "max_usd_per_hour": {"type": ["number", "null"]}, "max_usd_per_month": {"type": ["number", "null"]},
                "spent_this_month": usd}},
            "LedgerEntry": {"type": "object", "required": ["id", "object", "at", "kind", "amount", "balance_after"], "properties": {
                "id": {"type": "string"}, "object": {"const": "ledger_entry"}, "at": at, "kind": {"enum": ["credit", "hold", "release", "charge"]},
                "amount": usd, "hold_amount": {"type": ["number", "null"], "description": "hold and release entries: the amount held or released (their amount is 0: they do not move the balance)"},
                "rental_id": {"type": ["string", "null"]}, "request_id": {"type": ["string", "null"]},
                "note": {"type": ["string", "null"]}, "balance_after": usd}},
            "ApiKey": {"type": "object", "required": ["id", "object", "account_id", "prefix", "created_at", "revoked_at", "key"],
                "properties": {"id": {"type": "string"}, "object": {"const": "api_key"}, "account_id": {"type": "string"},
                "prefix": {"type": "string", "description": "The first characters of the secret, to tell keys apart"},
                "created_at": at, "revoked_at": time,
                "key": {"type": ["string", "null"], "description": "The secret: only in the answer that creates the key (not in its idempotent replay), null everywhere else"}}},
            "Account": {"type": "object", "required": ["id", "object", "name", "created_at", "balance", "held", "available"],
                "properties": {"id": {"type": "string"}, "object": {"const": "account"}, "name": {"type": "string"},
                "balance": usd, "held": usd, "available": usd, "created_at": at,
                "max_usd_per_hour": {"type": ["number", "null"], "description": "Cap on the summed price_per_hour of live rentals"},
                "max_usd_per_month": {"type": ["number", "null"], "description": "Cap on spent_this_month"},
                "spent_this_month": {"type": "number", "description": "USD charged since 00:00 UTC on the 1st"},
                "api_key": schema("ApiKey"), "api_keys": {"type": "array", "items": schema("ApiKey")},
                "entry": schema("LedgerEntry")}},
            "ProviderStatus": {"type": "object", "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                "base_url": {"type": ["string", "null"]}, "status": {"enum": ["pending", "ok", "stale", "failing"]},
                "offers": {"type": "integer"}, "last_refresh_at": time, "last_attempt_at": time,
                "last_error": {"type": ["string", "null"]}, "stale": {"type": "boolean"}}},
            "Model": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                "availability": {"enum": ["instant", "deploying", "cold"]}, "estimated_deploy_seconds": {"type": ["integer", "null"]}},
                "additionalProperties": true},
            "EventType": {"enum": ["*", "rental.running", "rental.ended", "deployment.ready", "account.low_balance", "account.spend_limit"]},
            "Webhook": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "webhook"},
                "url": {"type": "string"}, "events": {"type": "array", "items": schema("EventType")},
                "description": {"type": ["string", "null"]}, "created_at": at,
                "secret": {"type": "string", "description": "whsec_ + base64 of the 32-byte HMAC key; present only when the endpoint is created"}}},
            "WebhookDelivery": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "webhook_delivery"},
                "webhook_id": {"type": "string"}, "event_id": {"type": "string", "description": "webhook-id of every attempt"},
                "type": schema("EventType"), "status": {"enum": ["waiting", "pending", "delivered", "failed"]},
                "attempts": {"type": "integer"}, "last_status": {"type": ["integer", "null"]}, "last_error": {"type": ["string", "null"]},
                "created_at": at, "last_attempt_at": time, "next_attempt_at": time, "finished_at": time}},
            "Deploying": {"type": "object", "properties": {"status": {"const": "deploying"}, "message": {"type": "string"},
                "type": {"const": "model_deploying"}, "estimated_ready_seconds": {"type": "integer"}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn document_paths_and_methods_are_exactly_the_route_table() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut listed = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                listed.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let table: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(listed, table);
    }

    #[test]
    fn every_ref_resolves_and_path_params_are_declared() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = &part[..part.find('"').unwrap()];
            let (section, name) = target.split_once('/').unwrap();
            assert!(
                !doc["components"][section][name].is_null(),
                "dangling $ref {target}"
            );
        }
        let op = &doc["paths"]["/admin/v1/keys/{key_id}"]["delete"];
        assert_eq!(op["parameters"][0]["name"], "key_id");
        assert_eq!(op["security"][0]["adminToken"], serde_json::json!([]));
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([])
        );
        let ids: BTreeSet<_> = ROUTES.iter().map(operation_id).collect();
        assert_eq!(ids.len(), ROUTES.len(), "operationIds must be unique");
    }
}
