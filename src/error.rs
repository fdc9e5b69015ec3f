//! The domain's error type. `api::error` turns it into an OpenAI-shaped HTTP answer in
//! one place; nothing else builds error responses.

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 400: bad JSON or a bad parameter. `param` names the offending field.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// 401: missing, wrong or revoked key.
    #[error("{0}")]
    Unauthorized(String),
    /// 402: `available` cannot cover the hold or the charge.
    #[error("{0}")]
    InsufficientCredit(String),
    /// 404: unknown, or another account's.
    #[error("{0}")]
    NotFound(String),
    /// 409: state conflict (offer gone, price moved, already terminated, limit reached).
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    /// 413.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 422: idempotency key reused with another body.
    #[error("{0}")]
    IdempotencyMismatch(String),
    /// 429.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 404 with code `model_not_found`, as OpenAI answers.
    #[error("{0}")]
    ModelNotFound(String),
    /// 502: an upstream or deployment failed or answered 5xx.
    #[error("{0}")]
    BadGateway(String),
    /// 504: an upstream or deployment did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 503: a provider could not be reached or refused for its own reasons.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or a storage failure; details go to the log, not the client.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn bad(message: impl Into<String>) -> Error {
        Error::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn bad_param(param: &str, message: impl Into<String>) -> Error {
        Error::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::Conflict {
            message: message.into(),
            code,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Internal(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
