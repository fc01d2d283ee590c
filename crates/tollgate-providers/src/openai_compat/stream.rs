//! An OpenAI SSE response as a stream of chunk objects, under the call's deadline.

use crate::adapter::ChunkStream;
use crate::error::{Deadline, ProviderError};
use crate::sse::Decoder;
use futures::StreamExt;
use std::collections::VecDeque;
use tollgate_protocol::openai::chunk::Chunk;

struct State {
    body: http_body_util::BodyDataStream<hyper::body::Incoming>,
    decoder: Decoder,
    pending: VecDeque<Result<Chunk, ProviderError>>,
    /// The first-byte deadline, until the first event arrives.
    first_event: Option<tokio::time::Instant>,
    deadline: tokio::time::Instant,
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
            match tokio::time::timeout_at(until, st.body.next()).await {
                Err(_) => {
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
                    for event in st.decoder.feed(&bytes) {
                        st.first_event = None;
                        if st.done {
                            break;
                        }
                        push_event(&mut st, event.data);
                    }
                }
            }
        }
    })
    .boxed()
}

fn push_event(st: &mut State, data: String) {
    if data.trim() == "[DONE]" {
        st.done = true;
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
    st.pending.push_back(item);
}
