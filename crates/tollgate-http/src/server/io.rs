//! The connection's socket as hyper sees it, giving hyper's own error responses the SPEC §6
//! body: hyper answers a request head larger than its read buffer with a bare
//! `431 Request Header Fields Too Large` before any handler (or middleware) runs. This
//! wrapper replaces that bare answer with the same status and the error body every other
//! error has, naming the path from the request line it saw.

use crate::error::ErrorParts;
use crate::middleware::request::error_json;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The start of the bare answer hyper writes for an oversized head.
const BARE_431: &[u8] = b"HTTP/1.1 431 ";
/// Most bytes of a request line kept to name the path.
const LINE_MAX: usize = 2048;

pub(crate) struct ServedIo<T> {
    inner: T,
    /// The start of the request being read, up to its first line end.
    line: Vec<u8>,
    /// Whether `line` is still being filled (a new request's first bytes are next).
    at_start: bool,
    /// Our answer in place of hyper's bare one, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
}

impl<T> ServedIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            line: Vec::new(),
            at_start: true,
            answer: None,
        }
    }

    /// The request path of the line seen, `/` when none was.
    fn path(&self) -> String {
        let line = String::from_utf8_lossy(&self.line);
        let target = line.split_whitespace().nth(1).unwrap_or("/");
        target.split('?').next().unwrap_or("/").to_owned()
    }

    fn answer_431(&self) -> Vec<u8> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let parts = ErrorParts {
            message: format!(
                "The request head is larger than the limit of {} bytes.",
                super::MAX_BUF
            ),
            kind: "invalid_request_error",
            code: "request_header_fields_too_large",
        };
        let body = error_json(431, &parts, &self.path(), &request_id);
        format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

impl<T: AsyncWrite + Unpin> ServedIo<T> {
    /// Writes what is left of our answer; ready once it is all out.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = self.answer.as_mut() {
            if *written == bytes.len() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes a write hyper starts with `first`: `Some(len)` when it is the bare 431, which
    /// our answer replaces (hyper is told all `len` bytes went out).
    fn replaces(&mut self, first: &[u8], len: usize) -> Option<usize> {
        if first.starts_with(BARE_431) {
            // Hyper writes that answer at most once (and the handlers never write a 431): a
            // write of it that our answer is still going out for is the same one, retried.
            if self.answer.is_none() {
                self.answer = Some((self.answer_431(), 0));
            }
            return Some(len);
        }
        // A response is going out: the next bytes read start the next request.
        self.at_start = true;
        self.line.clear();
        None
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ServedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.at_start {
            let fresh = &buf.filled()[before..];
            let end = fresh.iter().position(|&b| b == b'\n');
            let take = end
                .unwrap_or(fresh.len())
                .min(LINE_MAX.saturating_sub(this.line.len()));
            this.line.extend_from_slice(&fresh[..take]);
            if end.is_some() || this.line.len() >= LINE_MAX {
                this.at_start = false;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ServedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        if let Some(len) = this.replaces(buf, buf.len()) {
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(len));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let len = bufs.iter().map(|b| b.len()).sum();
        if let Some(len) = this.replaces(first, len) {
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(len));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
