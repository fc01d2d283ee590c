//! `GET /v1/models` (also `/models`, `/api/v1/models`): the public catalogue, no key needed.

use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::{json, Value};
use tollgate_core::catalog::Catalog;

/// The listing, rendered once at start (the catalogue does not change while serving).
pub fn render(catalog: &Catalog) -> Bytes {
    let data: Vec<Value> = catalog
        .models()
        .iter()
        .map(|m| {
            let developer = m
                .info
                .get("developer")
                .and_then(Value::as_str)
                .unwrap_or("tollgate");
            json!({
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": developer,
                "aliases": m.aliases,
                "type": m.kind.as_str(),
                "info": m.info,
                "tags": m.tags,
            })
        })
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

pub async fn list(State(state): State<AppState>) -> Response {
    let mut r = Response::new(Body::from((*state.models_json).clone()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
