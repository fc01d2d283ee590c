//! OpenAI error bodies and transport failures, as [`ProviderError`]s.

use crate::error::{Deadline, ProviderError};
use serde_json::Value;

/// Most of an upstream error body kept in a message.
const MAX_MESSAGE: usize = 500;

pub(super) fn from_reqwest(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(Deadline::Connect)
    } else if e.is_connect() {
        ProviderError::Connect(e.to_string())
    } else if e.is_body() || e.is_decode() {
        ProviderError::Cut
    } else {
        ProviderError::Connect(e.to_string())
    }
}

/// Reads an OpenAI error body (`{"error": {"message": ...}}`) from a non-2xx response.
pub(super) async fn from_response(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = tokio::time::timeout_at(deadline, response.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("message").or(Some(e)))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let mut message = message.trim().to_owned();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    ProviderError::Status {
        status,
        message,
        retry_after,
    }
}
