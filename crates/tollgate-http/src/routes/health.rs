//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use tollgate_core::Error;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.relay.store().ping().await {
        Ok(()) => Ok(Json(json!({"status": "ready", "database": "ok"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(Error::Unavailable("The database is not reachable.".into()).into())
        }
    }
}
