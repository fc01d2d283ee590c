//! Every error → status, code and the SPEC §6 JSON body, in one exhaustive match.
//!
//! Handlers return [`ApiError`]; its response carries the status and the error's parts in an
//! extension, and the `error_body` middleware (which knows the path and request id) writes
//! the final body. Building a response has no side effects; the middleware logs.

use crate::server::Refusal;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tollgate_core::Error;

#[derive(Debug, Clone)]
pub enum ApiError {
    Domain(Error),
    RouteNotFound {
        method: String,
        path: String,
    },
    MethodNotAllowed,
    PayloadTooLarge {
        limit: usize,
    },
    /// The request body stopped arriving for longer than the server waits between reads.
    BodyStalled {
        after: Duration,
    },
    /// Requests in flight hold the memory budget; this one's body would pass it.
    MemoryBusy,
    /// The connection was over a connection cap.
    TooManyConnections(Refusal),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self::Domain(e)
    }
}

/// What the error-body middleware needs to finish an error response.
#[derive(Debug, Clone)]
pub struct ErrorParts {
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
}

impl ApiError {
    /// Status, OpenAI-style `type`, our `code` and the retry delay, for every error.
    fn classify(&self) -> (StatusCode, &'static str, &'static str, Option<u64>) {
        use StatusCode as S;
        match self {
            Self::Domain(e) => match e {
                Error::Body(_) => (
                    S::BAD_REQUEST,
                    "invalid_request_error",
                    "body_validation",
                    None,
                ),
                Error::Unsupported(_) => (
                    S::BAD_REQUEST,
                    "invalid_request_error",
                    "unsupported_value",
                    None,
                ),
                Error::InvalidKey => (
                    S::UNAUTHORIZED,
                    "authentication_error",
                    "invalid_api_key",
                    None,
                ),
                Error::CreditsExhausted { .. } => (
                    S::FORBIDDEN,
                    "insufficient_quota",
                    "credits_exhausted",
                    None,
                ),
                Error::TierModelForbidden { .. } => (
                    S::FORBIDDEN,
                    "permission_error",
                    "tier_model_forbidden",
                    None,
                ),
                Error::KeyLimitReached { .. } => {
                    (S::FORBIDDEN, "permission_error", "key_limit_reached", None)
                }
                Error::ScopeForbidden(_) => {
                    (S::FORBIDDEN, "permission_error", "scope_forbidden", None)
                }
                Error::AccountSuspended => {
                    (S::FORBIDDEN, "permission_error", "account_suspended", None)
                }
                Error::ModelNotFound(_) => {
                    (S::NOT_FOUND, "not_found_error", "model_not_found", None)
                }
                Error::FreeTierLimit { retry_after } => (
                    S::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "free_tier_limit",
                    Some(*retry_after),
                ),
                Error::RateLimited { retry_after, .. } => (
                    S::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limited",
                    Some(*retry_after),
                ),
                Error::Internal => (
                    S::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal_error",
                    None,
                ),
                Error::BadGateway(_) => (S::BAD_GATEWAY, "upstream_error", "bad_gateway", None),
                Error::Unavailable(_) => (
                    S::SERVICE_UNAVAILABLE,
                    "server_error",
                    "service_unavailable",
                    None,
                ),
                Error::GenerationTimeout => (
                    S::GATEWAY_TIMEOUT,
                    "timeout_error",
                    "generation_timeout",
                    None,
                ),
            },
            Self::RouteNotFound { .. } => {
                (S::NOT_FOUND, "not_found_error", "model_not_found", None)
            }
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                None,
            ),
            Self::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
                None,
            ),
            Self::BodyStalled { .. } => (
                S::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                None,
            ),
            Self::MemoryBusy => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
                Some(1),
            ),
            Self::TooManyConnections(Refusal::PerPeer { .. }) => (
                S::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
                Some(1),
            ),
            Self::TooManyConnections(Refusal::Total { .. }) => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
                Some(1),
            ),
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Domain(e) => e.to_string(),
            Self::RouteNotFound { method, path } => {
                format!("Cannot {method} {path}: no such route.")
            }
            Self::MethodNotAllowed => "This method is not allowed on this route.".to_owned(),
            Self::PayloadTooLarge { limit } => {
                format!("The request body is larger than the limit of {limit} bytes.")
            }
            Self::BodyStalled { after } => format!(
                "The request body stopped arriving: nothing came for {} s.",
                after.as_secs()
            ),
            Self::MemoryBusy => "The server is busy with other large requests; retry shortly.".to_owned(),
            Self::TooManyConnections(Refusal::PerPeer { limit }) => format!(
                "Too many connections from your address: at most {limit} are served at once. Close idle connections, or retry shortly."
            ),
            Self::TooManyConnections(Refusal::Total { limit }) => format!(
                "The server is at its limit of {limit} open connections; retry shortly."
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code, retry_after) = self.classify();
        let mut response = status.into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs.max(1)));
        }
        response.extensions_mut().insert(ErrorParts {
            message: self.message(),
            kind,
            code,
        });
        response
    }
}
