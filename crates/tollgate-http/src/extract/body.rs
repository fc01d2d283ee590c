//! Reads a request body up to the configured limit: over it is 413, never a buffered 64 MiB.
//!
//! An oversized body is read and discarded (up to a cap and a deadline) before the 413 is
//! sent, so a client still writing its body receives the error instead of a broken pipe.

use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;
use std::time::Duration;
use tollgate_core::Error;
use tollgate_protocol::BodyError;

/// Most bytes of an oversized body read and discarded before answering 413.
const DRAIN_CAP: u64 = 256 << 20;
/// Most bytes reserved ahead of arrival from a declared Content-Length.
const PRESIZE_CAP: usize = 1 << 20;
/// Longest time spent discarding an oversized body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = body;
    // Sized from the declared length rather than grown chunk by chunk, but only up to
    // PRESIZE_CAP: a length is a claim, and a client that declares megabytes and sends
    // nothing must not get them reserved.
    let presize = declared.map_or(0, |n| n.min(limit.min(PRESIZE_CAP) as u64) as usize);
    let mut buf = bytes::BytesMut::with_capacity(presize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Error::Body(BodyError::Malformed(format!(
                "the body could not be read: {e}"
            )))
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(ApiError::PayloadTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

async fn drain(mut body: Body) {
    let discard = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > DRAIN_CAP {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}
