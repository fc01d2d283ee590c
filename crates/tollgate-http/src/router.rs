//! The whole route table in one function.

use crate::error::ApiError;
use crate::middleware::request::request_context;
use crate::routes::{fallback, health, metrics, v1};
use crate::server::Refusal;
use crate::state::AppState;
use axum::http::{HeaderName, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// Response headers browsers may read.
const EXPOSED: &[&str] = &[
    "x-inference-id",
    "x-client-request-id",
    "x-request-id",
    "x-tollgate-credits-used",
    "x-tollgate-usd-spent",
    "retry-after",
    "server-timing",
];

/// What a connection refused at a cap is served: its error, whatever it asked, but for the
/// liveness check, which stays answered at the caps.
pub(crate) fn refusal(refusal: Refusal) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .fallback(move || async move { ApiError::TooManyConnections(refusal) })
        .layer(axum::middleware::from_fn(request_context))
}

pub fn router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(
            EXPOSED
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect::<Vec<_>>(),
        );
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/chat/completions", post(v1::chat_completions::handle))
        .route("/chat/completions", post(v1::chat_completions::handle))
        .route("/v1/models", get(v1::models::list))
        .route("/models", get(v1::models::list))
        .route("/api/v1/models", get(v1::models::list))
        .route("/v1/billing/balance", get(v1::billing_balance::handle))
        .fallback(fallback::not_found)
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(request_context))
        .layer(cors)
}
