//! The domain's error type: what went wrong, named by what it means, not by the HTTP
//! status it happens to answer. `api::error` alone decides the status, the OpenAI error
//! `type` and `code` of each; the domain never mentions HTTP.
//!
//! Each message (`Display`) is written for whoever reads it: the client for the errors
//! that are the caller's business, the daemon's log for [`Error::Store`] and
//! [`Error::Bug`], whose details never reach a client. A failure with a cause keeps it
//! as its `source()` (the store's redb error, say), and its message repeats the cause's
//! text, because logs print `Display` only.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad JSON, a missing or out-of-range parameter.
    /// `param` names the offending field when there is one.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    /// No credential, a wrong one, or a revoked one.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's key was valid, but its account is gone.
    #[error("the account no longer exists")]
    AccountGone,
    /// `available` cannot cover the hold or the charge.
    #[error("{0}")]
    InsufficientCredit(String),
    /// A spend guard of SPEC section 6 (an account's hourly or monthly cap) refuses it.
    /// The message names the cap and the current figure.
    #[error("{0}")]
    SpendLimit(String),
    /// Unknown, or another account's (the two are not told apart).
    #[error("{0}")]
    NotFound(String),
    /// A rent named an offer id that no provider ever offered (a typo, a made-up id);
    /// an offer that was offered and is gone is a [`Error::Conflict`].
    #[error("{0}")]
    OfferNotFound(String),
    /// The path is a route's, the method is not: `allow` lists the methods it has.
    #[error("{method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    /// The request collides with the state of things: offer gone, price moved, already
    /// terminated, a limit reached. `code` says which, for clients to branch on.
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    /// A request body past the configured limit.
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// An idempotency key reused with another request body.
    #[error("{0}")]
    IdempotencyMismatch(String),
    /// The caller's key is over its request rate.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// An inference request named a model the catalogue does not have.
    #[error("{0}")]
    ModelNotFound(String),
    /// An inference upstream (a hosted API or a deployment) failed, answered a server
    /// error, or sent an answer that could not be read.
    #[error("{0}")]
    UpstreamFailed(String),
    /// An inference upstream did not answer in time.
    #[error("{0}")]
    UpstreamTimedOut(String),
    /// A GPU provider could not be reached, refused for its own reasons, answered too
    /// late, or is not configured.
    #[error("{0}")]
    ProviderUnavailable(String),
    /// The store failed (I/O, a damaged or unreadable record, the writer gone).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something that cannot happen while spotd and its data are sound: a route
    /// without its parameter, a rental naming a missing account.
    #[error("{0}")]
    Bug(String),
}

impl Error {
    /// [`Error::Invalid`] about the request as a whole.
    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid {
            message: message.into(),
            param: None,
        }
    }

    /// [`Error::Invalid`] about the parameter `param`.
    pub(crate) fn invalid_param(param: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::Conflict {
            message: message.into(),
            code,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_keeps_the_redb_error_as_its_source() {
        use std::error::Error as _;
        let e = Error::from(StoreError::from(redb::Error::Io(std::io::Error::other(
            "disk on fire",
        ))));
        let store = e.source().expect("the store error");
        let redb = store.source().expect("the redb error");
        // Shared, so one failed commit answers every operation of its batch.
        let redb = redb
            .downcast_ref::<std::sync::Arc<redb::Error>>()
            .expect("an Arc<redb::Error>");
        assert!(matches!(**redb, redb::Error::Io(_)), "{redb:?}");
        // The log line, which prints only the message, still names the cause.
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }
}
