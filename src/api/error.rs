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
