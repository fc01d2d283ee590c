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
    let bytes = body::read(&headers, body, state.body_limit).await?;
    let request = ChatRequest::parse(Vec::from(bytes)).map_err(|e| match e {
        ChatRequestError::Body(b) => Error::Body(b),
        ChatRequestError::Unsupported(m) => Error::Unsupported(m),
    })?;
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
    if let Ok(v) = HeaderValue::from_str(&reply.inference_id) {
        response.headers_mut().insert("x-inference-id", v);
    }
    Ok(response)
}
