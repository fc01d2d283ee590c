//! The request's deadline over a stream, whichever provider produces it: at the deadline the
//! stream yields a total-timeout error and ends.

use futures::{Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};
use tollgate_protocol::openai::chunk::Chunk;
use tollgate_providers::error::Deadline;
use tollgate_providers::{ChunkStream, ProviderError};

struct Within {
    inner: ChunkStream,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

/// `chunks`, ended with [`ProviderError::Timeout`] at `deadline` if they have not ended.
pub(crate) fn within(chunks: ChunkStream, deadline: Instant) -> ChunkStream {
    Box::pin(Within {
        inner: chunks,
        timer: Box::pin(tokio::time::sleep_until(deadline)),
        done: false,
    })
}

impl Stream for Within {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        if st.done {
            return Poll::Ready(None);
        }
        match st.inner.poll_next_unpin(cx) {
            Poll::Ready(item) => {
                st.done = !matches!(item, Some(Ok(_)));
                Poll::Ready(item)
            }
            Poll::Pending => {
                std::task::ready!(st.timer.as_mut().poll(cx));
                st.done = true;
                Poll::Ready(Some(Err(ProviderError::Timeout(Deadline::Total))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_outlives_the_deadline_ends_with_a_timeout() {
        let chunk = Chunk::from_value(&serde_json::json!({"id": "c", "choices": []})).unwrap();
        let slow = futures::stream::iter([chunk.clone(), chunk])
            .then(|c| async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(c)
            })
            .boxed();
        let items: Vec<_> = within(slow, Instant::now() + Duration::from_secs(3))
            .collect()
            .await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(items[0].is_ok());
        assert!(
            matches!(items[1], Err(ProviderError::Timeout(Deadline::Total))),
            "{items:?}"
        );
    }
}
