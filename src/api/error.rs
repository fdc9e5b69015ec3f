//! The one place errors become HTTP answers, in the OpenAI error shape:
//! `{"error": {"message", "type", "code", "param"}}`. 5xx are logged at warn with
//! their detail; the client gets a generic message.

use hyper::StatusCode;
use serde_json::json;

use crate::error::Error;

pub struct Parts {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub retry_after: Option<u64>,
}

pub fn to_parts(e: &Error) -> Parts {
    let (status, kind, code, param, message) = match e {
        Error::BadRequest { message, param } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            if param.is_some() {
                "invalid_parameter"
            } else {
                "invalid_request"
            },
            param.clone(),
            message.clone(),
        ),
        Error::Unauthorized(m) => (
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            None,
            m.clone(),
        ),
        Error::InsufficientCredit(m) => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credit",
            "insufficient_credit",
            None,
            m.clone(),
        ),
        Error::NotFound(m) => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            None,
            m.clone(),
        ),
        Error::Conflict { message, code } => (
            StatusCode::CONFLICT,
            "invalid_request_error",
            *code,
            None,
            message.clone(),
        ),
        Error::PayloadTooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            None,
            e.to_string(),
        ),
        Error::IdempotencyMismatch(m) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            "idempotency_key_reused",
            None,
            m.clone(),
        ),
        Error::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            None,
            e.to_string(),
        ),
        Error::ModelNotFound(m) => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            Some("model".to_string()),
            m.clone(),
        ),
        Error::BadGateway(m) => {
            tracing::warn!(error = %m, "upstream failure");
            (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "bad_gateway",
                None,
                m.clone(),
            )
        }
        Error::GatewayTimeout(m) => {
            tracing::warn!(error = %m, "upstream timeout");
            (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
                None,
                m.clone(),
            )
        }
        Error::Unavailable(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "provider_unavailable",
            None,
            m.clone(),
        ),
        Error::Internal(m) => {
            tracing::warn!(error = %m, "internal error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                None,
                "internal error; the details are in the daemon's log".to_string(),
            )
        }
    };
    let retry_after = match e {
        Error::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    Parts {
        status,
        body: json!({"error": {"message": message, "type": kind, "code": code, "param": param}}),
        retry_after,
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
                Error::bad("bad body"),
                400,
                body("bad body", "invalid_request_error", "invalid_request", None),
            ),
            (
                Error::bad_param("limit", "limit must be 1 to 1000"),
                400,
                body(
                    "limit must be 1 to 1000",
                    "invalid_request_error",
                    "invalid_parameter",
                    Some("limit"),
                ),
            ),
            (
                Error::Unauthorized("invalid API key".into()),
                401,
                body(
                    "invalid API key",
                    "authentication_error",
                    "invalid_api_key",
                    None,
                ),
            ),
            (
                Error::Unauthorized("the account no longer exists".into()),
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
                Error::PayloadTooLarge(1024),
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
                Error::BadGateway("the upstream (x) answered 500".into()),
                502,
                body(
                    "the upstream (x) answered 500",
                    "upstream_error",
                    "bad_gateway",
                    None,
                ),
            ),
            (
                Error::GatewayTimeout("the upstream (x) did not answer within 5 s".into()),
                504,
                body(
                    "the upstream (x) did not answer within 5 s",
                    "upstream_error",
                    "upstream_timeout",
                    None,
                ),
            ),
            (
                Error::Unavailable("provider 'x' is not configured".into()),
                503,
                body(
                    "provider 'x' is not configured",
                    "service_unavailable",
                    "provider_unavailable",
                    None,
                ),
            ),
            (
                Error::Internal("rental r names a missing account".into()),
                500,
                body(internal, "server_error", "internal_error", None),
            ),
            (
                Error::from(crate::store::StoreError::Closed),
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
