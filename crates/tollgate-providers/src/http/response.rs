//! An upstream response body: hyper's, and for a driven connection the connection with it,
//! polled before each read and put back in its pool once the body has ended, even when the
//! reader stopped at its protocol's end (a stream's `[DONE]`) without reading the body's.

use super::driven::Driver;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

pub struct UpstreamBody {
    body: Incoming,
    /// The connection the body arrives on, when this task drives it.
    driver: Option<Driver>,
}

impl UpstreamBody {
    pub(super) fn pooled(body: Incoming) -> Self {
        Self { body, driver: None }
    }

    pub(super) fn driven(body: Incoming, driver: Driver) -> Self {
        Self {
            body,
            driver: Some(driver),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(driver) = this.driver.as_mut() {
            driver.drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(driver) = this.driver.take() {
                    driver.release(cx);
                }
            }
            // The connection broke: dropping it closes it.
            Some(Err(_)) => this.driver = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    /// Looks once, without waiting, whether the body has ended: then its connection goes
    /// back to the pool; otherwise dropping it closes the connection.
    fn drop(&mut self) {
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        driver.drive(&mut cx);
        if let Poll::Ready(None) = Pin::new(&mut self.body).poll_frame(&mut cx) {
            driver.release(&mut cx);
        }
    }
}
