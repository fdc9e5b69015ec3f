//! The one place errors become HTTP answers, in the OpenAI error shape:
//! `{"error": {"message", "type", "code", "param"}}`. Only here does a domain
//! [`Error`] get a status code and an OpenAI `type`/`code`.
//!
//! Errors that are spotd's own fault ([`Error::Store`], [`Error::Bug`]) answer 500
//! with a generic message and are logged at warn with their detail; upstream failures
//! (502, 504) are logged at warn and tell the client what the upstream did.

use hyper::StatusCode;
use serde_json::json;

use crate::error::Error;

/// What the client gets for an error.
pub struct Parts {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub retry_after: Option<u64>,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
}

/// The message of every 500: the cause is in the log, never in the answer.
const INTERNAL_MESSAGE: &str = "internal error; the details are in the daemon's log";

/// Status, OpenAI error `type` and `code` of each error.
fn classify(e: &Error) -> (StatusCode, &'static str, &'static str) {
    match e {
        Error::Invalid { param: Some(_), .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_parameter",
        ),
        Error::Invalid { param: None, .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
        Error::Unauthenticated(_) | Error::AccountGone => (
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
        ),
        Error::InsufficientCredit(_) => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credit",
            "insufficient_credit",
        ),
        Error::SpendLimit(_) => (
            StatusCode::PAYMENT_REQUIRED,
            "spend_limit_error",
            "spend_limit_exceeded",
        ),
        Error::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
        Error::OfferNotFound(_) => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "offer_not_found",
        ),
        Error::MethodNotAllowed { .. } => (
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
        ),
        Error::Conflict { code, .. } => (StatusCode::CONFLICT, "invalid_request_error", code),
        Error::TooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
        ),
        Error::IdempotencyMismatch(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            "idempotency_key_reused",
        ),
        Error::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        Error::ModelNotFound(_) => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        Error::UpstreamFailed(_) => (StatusCode::BAD_GATEWAY, "upstream_error", "bad_gateway"),
        Error::UpstreamTimedOut(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
        ),
        Error::ProviderUnavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "provider_unavailable",
        ),
        Error::Store(_) | Error::Bug(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
        ),
    }
}

pub fn to_parts(e: &Error) -> Parts {
    let (status, kind, code) = classify(e);
    let param = match e {
        Error::Invalid { param, .. } => param.clone(),
        // As OpenAI answers an unknown model.
        Error::ModelNotFound(_) => Some("model".to_string()),
        _ => None,
    };
    let message = match e {
        Error::Store(_) | Error::Bug(_) => {
            tracing::warn!(error = %e, "internal error");
            INTERNAL_MESSAGE.to_string()
        }
        Error::UpstreamFailed(_) => {
            tracing::warn!(error = %e, "upstream failure");
            e.to_string()
        }
        Error::UpstreamTimedOut(_) => {
            tracing::warn!(error = %e, "upstream timeout");
            e.to_string()
        }
        _ => e.to_string(),
    };
    let retry_after = match e {
        Error::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    let allow = match e {
        Error::MethodNotAllowed { allow, .. } => Some(allow.clone()),
        _ => None,
    };
    Parts {
        status,
        body: json!({"error": {"message": message, "type": kind, "code": code, "param": param}}),
        retry_after,
        allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: Error) -> (u16, serde_json::Value, Option<u64>) {
        let p = to_parts(&e);
        (p.status.as_u16(), p.body, p.retry_after)
    }

    fn body(message: &str, kind: &str, code: &str, param: Option<&str>) -> serde_json::Value {
        json!({"error": {"message": message, "type": kind, "code": code, "param": param}})
    }

    /// The HTTP contract of every error: status, OpenAI `type` and `code`, `param`,
    /// and the message the client reads (a generic one for 5xx that are spotd's own).
    #[test]
    fn every_error_has_its_status_and_body() {
        let internal = "internal error; the details are in the daemon's log";
        let cases = [
            (
                Error::invalid("bad body"),
                400,
                body("bad body", "invalid_request_error", "invalid_request", None),
            ),
            (
                Error::invalid_param("limit", "limit must be 1 to 1000"),
                400,
                body(
                    "limit must be 1 to 1000",
                    "invalid_request_error",
                    "invalid_parameter",
                    Some("limit"),
                ),
            ),
            (
                Error::Unauthenticated("invalid API key".into()),
                401,
                body(
                    "invalid API key",
                    "authentication_error",
                    "invalid_api_key",
                    None,
                ),
            ),
            (
                Error::AccountGone,
                401,
                body(
                    "the account no longer exists",
                    "authentication_error",
                    "invalid_api_key",
                    None,
                ),
            ),
            (
                Error::InsufficientCredit("insufficient credit".into()),
                402,
                body(
                    "insufficient credit",
                    "insufficient_credit",
                    "insufficient_credit",
                    None,
                ),
            ),
            (
                Error::SpendLimit("max_usd_per_hour is 2 USD/h".into()),
                402,
                body(
                    "max_usd_per_hour is 2 USD/h",
                    "spend_limit_error",
                    "spend_limit_exceeded",
                    None,
                ),
            ),
            (
                Error::NotFound("no rental with id 'x'".into()),
                404,
                body(
                    "no rental with id 'x'",
                    "invalid_request_error",
                    "not_found",
                    None,
                ),
            ),
            (
                Error::OfferNotFound("no offer with id 'vast:x'".into()),
                404,
                body(
                    "no offer with id 'vast:x'",
                    "invalid_request_error",
                    "offer_not_found",
                    None,
                ),
            ),
            (
                Error::MethodNotAllowed {
                    method: "PUT".into(),
                    path: "/v1/credits".into(),
                    allow: "GET, HEAD".into(),
                },
                405,
                body(
                    "PUT is not allowed on /v1/credits; allowed: GET, HEAD",
                    "invalid_request_error",
                    "method_not_allowed",
                    None,
                ),
            ),
            (
                Error::conflict("price_moved", "it costs more"),
                409,
                body(
                    "it costs more",
                    "invalid_request_error",
                    "price_moved",
                    None,
                ),
            ),
            (
                Error::TooLarge { limit: 1024 },
                413,
                body(
                    "request body is larger than 1024 bytes",
                    "invalid_request_error",
                    "body_too_large",
                    None,
                ),
            ),
            (
                Error::IdempotencyMismatch("reused".into()),
                422,
                body(
                    "reused",
                    "idempotency_error",
                    "idempotency_key_reused",
                    None,
                ),
            ),
            (
                Error::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                body(
                    "rate limit exceeded; retry after 3 s",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    None,
                ),
            ),
            (
                Error::ModelNotFound("no such model".into()),
                404,
                body(
                    "no such model",
                    "invalid_request_error",
                    "model_not_found",
                    Some("model"),
                ),
            ),
            (
                Error::UpstreamFailed("the upstream (x) answered 500".into()),
                502,
                body(
                    "the upstream (x) answered 500",
                    "upstream_error",
                    "bad_gateway",
                    None,
                ),
            ),
            (
                Error::UpstreamTimedOut("the upstream (x) did not answer within 5 s".into()),
                504,
                body(
                    "the upstream (x) did not answer within 5 s",
                    "upstream_error",
                    "upstream_timeout",
                    None,
                ),
            ),
            (
                Error::ProviderUnavailable("provider 'x' is not configured".into()),
                503,
                body(
                    "provider 'x' is not configured",
                    "service_unavailable",
                    "provider_unavailable",
                    None,
                ),
            ),
            (
                Error::Bug("rental r names a missing account".into()),
                500,
                body(internal, "server_error", "internal_error", None),
            ),
            (
                Error::from(crate::store::StoreError::Closed),
                500,
                body(internal, "server_error", "internal_error", None),
            ),
            (
                Error::from(crate::store::StoreError::from(redb::Error::Io(
                    std::io::Error::other("disk on fire at /var/lib/spotd"),
                ))),
                500,
                body(internal, "server_error", "internal_error", None),
            ),
        ];
        for (e, status, want) in cases {
            let shown = format!("{e:?}");
            let (got_status, got, retry_after) = answer(e);
            assert_eq!((got_status, &got), (status, &want), "{shown}");
            assert_eq!(retry_after, (status == 429).then_some(3), "{shown}");
        }
    }
}
