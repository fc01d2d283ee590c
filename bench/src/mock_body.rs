//! The mock's replies, rendered once at start, and the body type that sends them frame by frame.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

const CREATED: u64 = 1_700_000_000;
const MODEL: &str = "gpt-4o-mini";
const ID: &str = "chatcmpl-bench";

/// What the mock says; every reply is the same.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Content chunks in a stream.
    pub chunks: usize,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Every reply body, rendered once.
pub struct Bodies {
    /// A whole `chat.completion` with `usage`.
    pub completion: Bytes,
    /// SSE events of a stream that asked for usage (chunks carry `usage: null`, then the
    /// `choices: []` usage chunk), ending with `[DONE]`.
    pub stream_with_usage: Arc<[Bytes]>,
    /// SSE events of a stream that did not ask for usage.
    pub stream_plain: Arc<[Bytes]>,
}

impl Bodies {
    pub fn render(shape: Shape) -> Self {
        let words: Vec<String> = (0..shape.chunks)
            .map(|i| if i == 0 { "tok".into() } else { " tok".into() })
            .collect();
        let usage = json!({
            "prompt_tokens": shape.prompt_tokens,
            "completion_tokens": shape.completion_tokens,
            "total_tokens": shape.prompt_tokens + shape.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        });
        let completion = json!({
            "id": ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.concat(), "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        Self {
            completion: Bytes::from(completion.to_string()),
            stream_with_usage: stream_events(&words, Some(&usage)).into(),
            stream_plain: stream_events(&words, None).into(),
        }
    }
}

fn stream_events(words: &[String], usage: Option<&Value>) -> Vec<Bytes> {
    let chunk = |choices: Value, usage_field: Option<Value>| {
        let mut c = json!({
            "id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
            "system_fingerprint": "fp_bench", "choices": choices,
        });
        if let Some(u) = usage_field {
            c["usage"] = u;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let null_usage = usage.map(|_| Value::Null);
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events = vec![chunk(
        choice(json!({"role": "assistant", "content": ""}), Value::Null),
        null_usage.clone(),
    )];
    for w in words {
        events.push(chunk(
            choice(json!({"content": w}), Value::Null),
            null_usage.clone(),
        ));
    }
    events.push(chunk(choice(json!({}), json!("stop")), null_usage));
    if let Some(u) = usage {
        events.push(chunk(json!([]), Some(u.clone())));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// A reply body: one pre-rendered buffer, or pre-rendered SSE events with a pause between.
pub enum MockBody {
    Full(Option<Bytes>),
    Events {
        events: Arc<[Bytes]>,
        next: usize,
        delay: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl MockBody {
    pub fn events(events: Arc<[Bytes]>, delay: Duration) -> Self {
        Self::Events {
            events,
            next: 0,
            delay,
            sleep: None,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Events {
                events,
                next,
                delay,
                sleep,
            } => {
                if *next >= events.len() {
                    return Poll::Ready(None);
                }
                // The first event goes at once; each later one after `delay`.
                if *next > 0 && !delay.is_zero() {
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*delay)));
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                let event = events[*next].clone();
                *next += 1;
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Events { events, next, .. } => *next >= events.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Events { .. } => SizeHint::default(),
        }
    }
}
