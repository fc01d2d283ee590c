//! Gives each request an id, echoes a valid client request id, and finishes every error
//! response with the SPEC §6 body (path, request id, timestamp) — including axum's own.

use crate::error::ErrorParts;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{SecondsFormat, Utc};
use serde_json::json;
use std::time::Instant;
use tollgate_core::ids::valid_client_request_id;

/// Per-request facts set at the edge.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub client_request_id: Option<String>,
    pub started: Instant,
}

pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = uuid::Uuid::new_v4().to_string();
    let client_request_id = req
        .headers()
        .get("x-client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_client_request_id(v))
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(RequestContext {
        id: id.clone(),
        client_request_id: client_request_id.clone(),
        started,
    });
    let mut response = next.run(req).await;
    let parts = response
        .extensions_mut()
        .remove::<ErrorParts>()
        .or_else(|| bare_error(&response));
    if let Some(parts) = parts {
        response = finish_error(response, parts, &path, &id);
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", v);
    }
    if let Some(v) = client_request_id.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert("x-client-request-id", v);
    }
    response
}

/// An error response something other than our handlers produced (an axum default, a layer).
fn bare_error(response: &Response) -> Option<ErrorParts> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return None;
    }
    let (message, kind, code) = match status {
        StatusCode::NOT_FOUND => ("No such route.", "not_found_error", "model_not_found"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "This method is not allowed on this route.",
            "invalid_request_error",
            "method_not_allowed",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "The request body is too large.",
            "invalid_request_error",
            "payload_too_large",
        ),
        s if s.is_client_error() => (
            "The request is invalid.",
            "invalid_request_error",
            "body_validation",
        ),
        _ => (
            "An internal error occurred.",
            "server_error",
            "internal_error",
        ),
    };
    Some(ErrorParts {
        message: message.to_owned(),
        kind,
        code,
    })
}

fn finish_error(response: Response, parts: ErrorParts, path: &str, request_id: &str) -> Response {
    let status = response.status();
    if status.is_server_error() {
        tracing::error!(%status, code = parts.code, request_id, path, "{}", parts.message);
    } else {
        tracing::debug!(%status, code = parts.code, request_id, path, "{}", parts.message);
    }
    let body = error_json(status.as_u16(), &parts, path, request_id);
    let (mut head, _) = response.into_parts();
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    head.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(head, Body::from(body))
}

/// The SPEC §6 error body.
pub(crate) fn error_json(status: u16, parts: &ErrorParts, path: &str, request_id: &str) -> String {
    json!({
        "message": parts.message,
        "path": path,
        "requestId": request_id,
        "statusCode": status.to_string(),
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "error": {"message": parts.message, "type": parts.kind, "code": parts.code},
    })
    .to_string()
}
