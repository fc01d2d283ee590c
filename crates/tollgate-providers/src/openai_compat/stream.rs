//! An OpenAI SSE response as a stream of chunk objects, under the call's deadline.

use crate::adapter::ChunkStream;
use crate::error::{Deadline, ProviderError};
use crate::sse::Decoder;
use futures::StreamExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tollgate_protocol::openai::chunk::Chunk;

struct State {
    body: http_body_util::BodyDataStream<hyper::body::Incoming>,
    decoder: Decoder,
    pending: VecDeque<Result<Chunk, ProviderError>>,
    /// The first-byte deadline, until the first event arrives.
    first_event: Option<tokio::time::Instant>,
    deadline: tokio::time::Instant,
    /// Set for whichever deadline applies; reset only when that changes, not per read.
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

pub(super) fn chunks(
    response: hyper::Response<hyper::body::Incoming>,
    first_event: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> ChunkStream {
    let state = State {
        body: http_body_util::BodyDataStream::new(response.into_body()),
        decoder: Decoder::new(),
        pending: VecDeque::new(),
        first_event: Some(first_event),
        deadline,
        timer: Box::pin(tokio::time::sleep_until(first_event.min(deadline))),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                if item.is_err() {
                    st.done = true;
                    st.pending.clear();
                }
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            let (until, missed) = match st.first_event {
                Some(at) if at < st.deadline => (at, Deadline::FirstByte),
                _ => (st.deadline, Deadline::Total),
            };
            if st.timer.deadline() != until {
                st.timer.as_mut().reset(until);
            }
            let next = futures::future::poll_fn(|cx| match st.body.poll_next_unpin(cx) {
                Poll::Ready(item) => Poll::Ready(Ok(item)),
                Poll::Pending => st.timer.as_mut().poll(cx).map(Err),
            });
            match next.await {
                Err(()) => {
                    st.done = true;
                    return Some((Err(ProviderError::Timeout(missed)), st));
                }
                Ok(None) => {
                    st.done = true;
                    return Some((Err(ProviderError::Cut), st));
                }
                Ok(Some(Err(_))) => {
                    st.done = true;
                    return Some((Err(ProviderError::Cut), st));
                }
                Ok(Some(Ok(bytes))) => {
                    let State {
                        decoder,
                        pending,
                        first_event,
                        done,
                        ..
                    } = &mut st;
                    decoder.feed(&bytes, |event| {
                        *first_event = None;
                        if !*done {
                            push_event(pending, done, event.data);
                        }
                    });
                }
            }
        }
    })
    .boxed()
}

fn push_event(pending: &mut VecDeque<Result<Chunk, ProviderError>>, done: &mut bool, data: String) {
    if data.trim() == "[DONE]" {
        *done = true;
        return;
    }
    let item = match Chunk::parse(data) {
        Ok(chunk) => match chunk.error_message() {
            Some(message) => Err(ProviderError::Status {
                status: 500,
                message,
                retry_after: None,
            }),
            None => Ok(chunk),
        },
        Err(_) => Err(ProviderError::Invalid(
            "stream event is not a JSON object".into(),
        )),
    };
    pending.push_back(item);
}
