//! OpenAI error bodies and transport failures, as [`ProviderError`]s.

use crate::error::{Deadline, ProviderError};
use crate::http::{SendError, UpstreamBody};
use crate::secret::Redactor;
use serde_json::Value;

/// Most of an upstream error body kept in a message.
const MAX_MESSAGE: usize = 500;
/// Most of an upstream error body read; the rest is not waited for.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A request that got no response: the connection failed, timed out or closed first.
pub(super) fn from_client(e: SendError, redactor: &Redactor) -> ProviderError {
    match e {
        SendError::ConnectTimeout => ProviderError::Timeout(Deadline::Connect),
        SendError::Connect(why) => ProviderError::Connect(redactor.redact(&why).into_owned()),
        // Connected, then the upstream closed or broke the connection before a response.
        SendError::Failed => ProviderError::Cut,
    }
}

/// Reads an OpenAI error body (`{"error": {"message": ...}}`) from a non-2xx response; its
/// message, redacted, is kept.
pub(super) async fn from_response(
    response: hyper::Response<UpstreamBody>,
    deadline: tokio::time::Instant,
    redactor: &Redactor,
) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let read = crate::body::read(response.into_body(), MAX_ERROR_BODY);
    let body = tokio::time::timeout_at(deadline, read)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|read| read.bytes)
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
    let mut message = redactor.redact(message.trim()).into_owned();
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
