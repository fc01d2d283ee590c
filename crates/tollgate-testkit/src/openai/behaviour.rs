//! What the fake OpenAI server does with each chat-completions request.

use serde_json::json;
use std::time::Duration;

/// Reply length of the variants that do not set one.
pub const DEFAULT_REPLY_TOKENS: u32 = 5;

/// How the fake answers `POST /v1/chat/completions`. Every request is recorded first.
///
/// Streaming variants answer in OpenAI's stream format when the request has `stream: true`;
/// `HangAfter` and `CutAfter` on a non-stream request stall or cut inside the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// OpenAI's documented reply: `reply_tokens` words (fewer if `max_tokens` or
    /// `max_completion_tokens` cuts it, with `finish_reason: "length"`), one stream chunk per
    /// word, waiting `chunk_delay` before each stream event, with exact `usage`.
    Normal {
        reply_tokens: u32,
        chunk_delay: Duration,
    },
    /// `status` with `body` as `application/json`, and `Retry-After` when set.
    Error {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Accepts the request and never answers.
    Hang,
    /// Streams the role chunk and `chunks` content chunks, then stalls forever.
    HangAfter { chunks: u32 },
    /// Streams the role chunk and `chunks` content chunks, then drops the connection.
    CutAfter { chunks: u32 },
    /// Like `Normal` with the default length, but never reports `usage`.
    NoUsage,
    /// Like `Normal` with the default length, but reports `completion_tokens` in `usage`.
    LieUsage { completion_tokens: u64 },
    /// `reply_tokens` words whatever `max_tokens` says, and no `usage`: an upstream that
    /// ignores the output limit and reports nothing.
    Overlong { reply_tokens: u32 },
    /// `200 OK` with a body that is not JSON.
    NotJson,
    /// A stream whose first event never ends: `data: ` and then bytes without a line end,
    /// for as long as the client reads (a stream request only).
    EndlessEvent,
    /// `status` with an `application/json` body that never ends: the start of an object
    /// and then bytes without its end, for as long as the client reads.
    EndlessBody { status: u16 },
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::normal(DEFAULT_REPLY_TOKENS)
    }
}

impl Behaviour {
    /// `Normal` with `reply_tokens` words and no delay.
    pub fn normal(reply_tokens: u32) -> Self {
        Self::Normal {
            reply_tokens,
            chunk_delay: Duration::ZERO,
        }
    }

    /// `500` with OpenAI's `server_error` body carrying `message`.
    pub fn server_error(message: &str) -> Self {
        Self::error(500, message, "server_error", None, None)
    }

    /// `429` with OpenAI's rate-limit body and `Retry-After: retry_after_secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let message = "Rate limit reached for requests";
        Self::error(
            429,
            message,
            "requests",
            Some("rate_limit_exceeded"),
            Some(retry_after_secs),
        )
    }

    /// `400` with OpenAI's `invalid_request_error` body carrying `message`.
    pub fn invalid_request(message: &str) -> Self {
        Self::error(400, message, "invalid_request_error", None, None)
    }

    fn error(
        status: u16,
        message: &str,
        kind: &str,
        code: Option<&str>,
        retry_after: Option<u64>,
    ) -> Self {
        let body =
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
        Self::Error {
            status,
            body: body.to_string(),
            retry_after,
        }
    }
}
