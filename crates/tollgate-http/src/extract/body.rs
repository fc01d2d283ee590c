//! Reads a request body up to the configured limit: over it is 413, never a buffered 64 MiB;
//! a body that stops arriving for longer than the read deadline is 408; a large one holds
//! its share of the memory budget while its request runs.
//!
//! An oversized body, or one refused by the memory budget, is read and discarded (up to a cap
//! and a deadline) before the error is sent, so a client still writing its body receives the
//! error instead of a broken pipe.

use super::memory::{MemoryBudget, MemoryLease};
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

/// How a body may be read.
#[derive(Clone)]
pub struct BodyLimits {
    /// Most bytes.
    pub max: usize,
    /// Longest wait for the next piece of the body.
    pub read_timeout: Duration,
    pub memory: MemoryBudget,
}

/// The body, and what it holds of the memory budget (keep it until the request is done).
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limits: &BodyLimits,
) -> Result<(Bytes, MemoryLease), ApiError> {
    let limit = limits.max;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = body;
    let mut lease = MemoryLease::default();
    if let Some(n) = declared {
        if let Err(busy) = limits.memory.cover(&mut lease, n as usize) {
            drain(body).await;
            return Err(busy);
        }
    }
    // Sized from the declared length rather than grown chunk by chunk (which would hold up to
    // twice the body while it doubles), but only as far as the memory lease or PRESIZE_CAP
    // covers it: a length is a claim, and a client that declares megabytes and sends nothing
    // must not get them reserved beyond its share of the budget.
    let presize = declared.map_or(0, |n| {
        let covered = if lease.covers_any() {
            limit
        } else {
            PRESIZE_CAP
        };
        n.min(covered.min(limit) as u64) as usize
    });
    let mut buf = bytes::BytesMut::with_capacity(presize);
    loop {
        let frame = match tokio::time::timeout(limits.read_timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::BodyStalled {
                    after: limits.read_timeout,
                })
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame,
        };
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
            if let Err(busy) = limits.memory.cover(&mut lease, buf.len() + data.len()) {
                drain(body).await;
                return Err(busy);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf.freeze(), lease))
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
