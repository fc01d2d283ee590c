//! An OpenAI SSE response as a stream of chunk objects, under the call's deadline.

use crate::adapter::ChunkStream;
use crate::error::{Deadline, ProviderError};
use crate::http::UpstreamBody;
use crate::secret::Redactor;
use crate::sse::{Decoder, MAX_EVENT};
use futures::{ready, Stream};
use hyper::body::Body;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tollgate_protocol::openai::chunk::Chunk;

/// An event read but not yet taken: its data is parsed when it is taken, so that the first
/// event of a burst goes out before the rest of the burst is parsed.
enum Pending {
    Data(String),
    Failed(ProviderError),
}

/// The chunks of one response, as a hand-written stream: it is polled once per event, and
/// keeps its state in place instead of moving it into a new future per item.
struct Chunks {
    body: UpstreamBody,
    decoder: Decoder,
    pending: VecDeque<Pending>,
    /// The first-byte deadline, until the first event arrives.
    first_event: Option<tokio::time::Instant>,
    deadline: tokio::time::Instant,
    /// Set for whichever deadline applies; reset only when that changes, not per read.
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    redactor: Arc<Redactor>,
}

pub(super) fn chunks(
    response: hyper::Response<UpstreamBody>,
    first_event: tokio::time::Instant,
    deadline: tokio::time::Instant,
    redactor: Arc<Redactor>,
) -> ChunkStream {
    Box::pin(Chunks {
        body: response.into_body(),
        decoder: Decoder::new(),
        pending: VecDeque::new(),
        first_event: Some(first_event),
        deadline,
        timer: Box::pin(tokio::time::sleep_until(first_event.min(deadline))),
        done: false,
        redactor,
    })
}

impl Stream for Chunks {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        loop {
            if let Some(next) = st.pending.pop_front() {
                let item = match next {
                    Pending::Data(data) => parse_event(data, &st.redactor),
                    Pending::Failed(e) => Err(e),
                };
                if item.is_err() {
                    st.done = true;
                    st.pending.clear();
                }
                return Poll::Ready(Some(item));
            }
            if st.done {
                return Poll::Ready(None);
            }
            let (until, missed) = match st.first_event {
                Some(at) if at < st.deadline => (at, Deadline::FirstByte),
                _ => (st.deadline, Deadline::Total),
            };
            if st.timer.deadline() != until {
                st.timer.as_mut().reset(until);
            }
            let read = match Pin::new(&mut st.body).poll_frame(cx) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    ready!(st.timer.as_mut().poll(cx));
                    st.done = true;
                    return Poll::Ready(Some(Err(ProviderError::Timeout(missed))));
                }
            };
            let bytes = match read {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(bytes) => bytes,
                    Err(_) => continue, // trailers
                },
                None | Some(Err(_)) => {
                    st.done = true;
                    return Poll::Ready(Some(Err(ProviderError::Cut)));
                }
            };
            let Chunks {
                decoder,
                pending,
                first_event,
                done,
                ..
            } = st;
            let fed = decoder.feed(&bytes, |event| {
                *first_event = None;
                if *done {
                    return;
                }
                if event.data.trim() == "[DONE]" {
                    *done = true;
                } else {
                    pending.push_back(Pending::Data(event.data));
                }
            });
            if fed.is_err() && !*done {
                *done = true;
                pending.push_back(Pending::Failed(ProviderError::Invalid(format!(
                    "stream event longer than {MAX_EVENT} bytes"
                ))));
            }
        }
    }
}

/// One event's data as a chunk, or the error it stands for.
fn parse_event(data: String, redactor: &Redactor) -> Result<Chunk, ProviderError> {
    match Chunk::parse(data) {
        Ok(chunk) => match chunk.error_message() {
            Some(message) => Err(ProviderError::Status {
                status: 500,
                message: redactor.redact(&message).into_owned(),
                retry_after: None,
            }),
            None => Ok(chunk),
        },
        Err(_) => Err(ProviderError::Invalid(
            "stream event is not a JSON object".into(),
        )),
    }
}
