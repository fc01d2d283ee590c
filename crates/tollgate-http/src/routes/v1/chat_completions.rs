//! `POST /v1/chat/completions` (also `/chat/completions`).

use crate::error::ApiError;
use crate::extract::{auth::bearer, body};
use crate::middleware::request::RequestContext;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Extension;
use futures::StreamExt;
use std::convert::Infallible;
use std::time::Duration;
use tollgate_core::relay::{ReplyBody, RequestMeta};
use tollgate_core::Error;
use tollgate_protocol::openai::chat::{ChatRequest, ChatRequestError};

pub async fn handle(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = state.relay.authenticate(bearer(&headers)).await?;
    // Held until the reply's head is out: the body, its parsed form and the upstream body
    // are gone by then.
    let (bytes, _memory) = body::read(&headers, body, &state.body).await?;
    let request = parse(bytes).await?;
    let meta = RequestMeta {
        request_id: ctx.id,
        client_request_id: ctx.client_request_id,
        started: ctx.started,
    };
    let reply = state.relay.chat(&who, meta, request).await?;
    let mut response = match reply.body {
        ReplyBody::Json { body, credits, usd } => {
            let mut r = Response::new(Body::from(body));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-tollgate-credits-used", HeaderValue::from(credits.0));
            if let Ok(v) = HeaderValue::from_str(&usd) {
                h.insert("x-tollgate-usd-spent", v);
            }
            r
        }
        ReplyBody::Stream(events) => {
            let mut r = Response::new(Body::from_stream(events.map(Ok::<_, Infallible>)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            r
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&reply.inference_id) {
        h.insert("x-inference-id", v);
    }
    let timing = server_timing(reply.upstream, ctx.started.elapsed());
    if let Ok(v) = HeaderValue::try_from(timing) {
        h.insert("server-timing", v);
    }
    Ok(response)
}

/// Bodies above this size are read (and their prompt counted) off the server's threads, so a
/// long prompt does not hold up the other connections of its thread.
const PARSE_INLINE_MAX: usize = 256 * 1024;

async fn parse(bytes: bytes::Bytes) -> Result<ChatRequest, Error> {
    let parsed = if bytes.len() <= PARSE_INLINE_MAX {
        ChatRequest::parse(Vec::from(bytes))
    } else {
        tokio::task::spawn_blocking(move || ChatRequest::parse(Vec::from(bytes)))
            .await
            .map_err(|_| Error::Internal)?
    };
    parsed.map_err(|e| match e {
        ChatRequestError::Body(b) => Error::Body(b),
        ChatRequestError::Unsupported(m) => Error::Unsupported(m),
    })
}

/// The `Server-Timing` value for a reply whose head is ready `total` after the request
/// arrived, `upstream` of it spent waiting for the upstream: `gateway` is tollgate's own part
/// (authentication, the hold, settlement of a complete reply, rendering).
fn server_timing(upstream: Duration, total: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "upstream;dur={:.3}, gateway;dur={:.3}",
        ms(upstream),
        ms(total.saturating_sub(upstream))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_splits_the_time_before_the_head() {
        let t = server_timing(Duration::from_micros(1500), Duration::from_micros(1750));
        assert_eq!(t, "upstream;dur=1.500, gateway;dur=0.250");
        // A clock that could not move backwards still never reports a negative part.
        let t = server_timing(Duration::from_millis(2), Duration::from_millis(1));
        assert_eq!(t, "upstream;dur=2.000, gateway;dur=0.000");
    }
}
