//! Turns a [`Behaviour`] and a request into the HTTP response the fake sends.

use super::behaviour::{Behaviour, DEFAULT_REPLY_TOKENS};
use super::wire::{self, Ask};
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::json;
use std::time::Duration;

/// How a reply's body ends after its scripted part.
#[derive(Clone, Copy)]
enum End {
    Done,
    Hang,
    Cut,
}

/// What a reply's `usage` says.
#[derive(Clone, Copy)]
enum Reported {
    Nothing,
    Truth,
    Completion(u64),
}

impl Reported {
    fn object(self, prompt_tokens: u64, delivered: usize) -> Option<serde_json::Value> {
        match self {
            Self::Nothing => None,
            Self::Truth => Some(wire::usage(prompt_tokens, delivered as u64)),
            Self::Completion(n) => Some(wire::usage(prompt_tokens, n)),
        }
    }
}

/// A successful reply: its length, pacing, reported usage and ending.
struct Script {
    reply_tokens: u32,
    delay: Duration,
    usage: Reported,
    end: End,
}

pub(super) async fn respond(behaviour: Behaviour, mut ask: Ask) -> Response {
    let script = |reply_tokens, usage, end| Script {
        reply_tokens,
        delay: Duration::ZERO,
        usage,
        end,
    };
    let script = match behaviour {
        Behaviour::Normal {
            reply_tokens,
            chunk_delay,
        } => Script {
            delay: chunk_delay,
            ..script(reply_tokens, Reported::Truth, End::Done)
        },
        Behaviour::NoUsage => script(DEFAULT_REPLY_TOKENS, Reported::Nothing, End::Done),
        Behaviour::LieUsage { completion_tokens } => script(
            DEFAULT_REPLY_TOKENS,
            Reported::Completion(completion_tokens),
            End::Done,
        ),
        Behaviour::Overlong { reply_tokens } => {
            ask.max_tokens = None;
            script(reply_tokens, Reported::Nothing, End::Done)
        }
        Behaviour::HangAfter { chunks } => script(chunks, Reported::Nothing, End::Hang),
        Behaviour::CutAfter { chunks } => script(chunks, Reported::Nothing, End::Cut),
        Behaviour::Hang => return std::future::pending().await,
        Behaviour::EndlessEvent => {
            let body = endless(b"data: {\"x\":\"");
            return ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
        }
        Behaviour::EndlessBody { status } => {
            let status = StatusCode::from_u16(status).expect("a valid HTTP status");
            let body = endless(b"{\"error\":{\"message\":\"");
            return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        Behaviour::NotJson => {
            let html = "<html><body>502 Bad Gateway</body></html>";
            return ([(header::CONTENT_TYPE, "text/html")], html).into_response();
        }
        Behaviour::Error {
            status,
            body,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).expect("a valid HTTP status");
            let mut response =
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.into());
            }
            return response;
        }
    };
    if ask.stream {
        stream_reply(&ask, &script)
    } else {
        json_reply(&ask, &script)
    }
}

/// `start`, then filler bytes for as long as the client reads.
fn endless(start: &'static [u8]) -> Body {
    let filler = Bytes::from(vec![b'a'; 64 * 1024]);
    let body = stream::once(async move { Bytes::from_static(start) })
        .chain(stream::repeat(filler))
        .map(Ok::<_, std::io::Error>);
    Body::from_stream(body)
}

fn json_reply(ask: &Ask, script: &Script) -> Response {
    let (words, finish) = ask.words(script.reply_tokens);
    let usage = script.usage.object(ask.prompt_tokens, words.len());
    let body = Bytes::from(ask.completion(&words, finish, usage).to_string());
    let pieces = match script.end {
        End::Done => vec![body],
        End::Hang => vec![],
        End::Cut => vec![body.slice(..body.len() / 2)],
    };
    with_body("application/json", pieces, Duration::ZERO, script.end)
}

fn stream_reply(ask: &Ask, script: &Script) -> Response {
    let (words, finish) = ask.words(script.reply_tokens);
    let mut events = vec![wire::event(
        &ask.chunk(json!({"role": "assistant", "content": ""}), None),
    )];
    for word in &words {
        events.push(wire::event(&ask.chunk(json!({"content": word}), None)));
    }
    if let End::Done = script.end {
        events.push(wire::event(&ask.chunk(json!({}), Some(finish))));
        let usage = script.usage.object(ask.prompt_tokens, words.len());
        if let (true, Some(usage)) = (ask.include_usage, usage) {
            events.push(wire::event(&ask.usage_chunk(usage)));
        }
        events.push(Bytes::from_static(wire::DONE));
    }
    with_body("text/event-stream", events, script.delay, script.end)
}

/// A `200 OK` sending `pieces` (waiting `delay` before each), then ending as `end` says.
fn with_body(
    content_type: &'static str,
    pieces: Vec<Bytes>,
    delay: Duration,
    end: End,
) -> Response {
    let paced = stream::iter(pieces).then(move |piece| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(piece)
    });
    let tail: BoxStream<'static, Result<Bytes, std::io::Error>> = match end {
        End::Done => stream::empty().boxed(),
        End::Hang => stream::pending().boxed(),
        End::Cut => stream::once(async {
            // Let what was sent reach the client before the connection is dropped.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other(
                "the fake upstream cut the connection",
            ))
        })
        .boxed(),
    };
    let body = Body::from_stream(paced.chain(tail));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
