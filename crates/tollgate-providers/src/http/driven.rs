//! Plain-HTTP/1.1 upstream connections driven by the task that reads them.
//!
//! hyper-util's pooled client runs each connection as a task of its own, which hands a
//! response body over one HTTP chunk at a time: for every chunk of a stream the connection's
//! task and the reader's take turns. Here the reader polls the connection itself before each
//! read of the body ([`UpstreamBody`]), so chunks that arrived together are read in one go
//! and a chunk arriving alone wakes the reader directly. Idle connections wait in a pool per
//! thread and upstream, newest on top, and are checked for a close by the upstream when
//! taken out; one found closed before the request went out is replaced by a new one.

use super::response::UpstreamBody;
use super::{describe, SendError, IDLE_TIMEOUT, MAX_BUF};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, HOST};
use hyper::http::uri::{Authority, Parts};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;
use tokio::net::TcpStream;

type Conn = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Most idle connections kept per thread and upstream.
const MAX_IDLE: usize = 512;

/// One connection: the handle that sends requests on it and the future that runs it.
pub(super) struct Driver {
    send: http1::SendRequest<Full<Bytes>>,
    conn: Pin<Box<Conn>>,
    /// The connection's future has finished: it is closed.
    closed: bool,
    authority: Authority,
    pools: Weak<Pools>,
}

impl Driver {
    /// Lets the connection read and write what it can.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.conn.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    /// Puts the connection back in its pool once its response has ended, unless it closed.
    pub(super) fn release(mut self, cx: &mut Context<'_>) {
        self.drive(cx);
        if self.closed {
            return;
        }
        if let Some(pools) = self.pools.upgrade() {
            pools.put(self);
        }
    }
}

struct Idle {
    driver: Driver,
    since: Instant,
}

/// One thread's idle connections, newest last, per upstream.
type Upstreams = Vec<(Authority, VecDeque<Idle>)>;

/// Idle connections, per thread and upstream.
#[derive(Default)]
pub(super) struct Pools {
    threads: ThreadLocal<RefCell<Upstreams>>,
}

impl Pools {
    /// The newest idle connection to `authority` that is still open and ready.
    fn take(&self, authority: &Authority) -> Option<Driver> {
        let mut threads = self.threads.get_or_default().borrow_mut();
        let (_, idle) = threads.iter_mut().find(|(a, _)| a == authority)?;
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(Idle { mut driver, since }) = idle.pop_back() {
            if since.elapsed() > IDLE_TIMEOUT {
                // The ones below waited longer still.
                idle.clear();
                return None;
            }
            // Reads a close the upstream sent while the connection waited.
            driver.drive(&mut cx);
            if !driver.closed && driver.send.is_ready() {
                return Some(driver);
            }
        }
        None
    }

    fn put(&self, driver: Driver) {
        let mut threads = self.threads.get_or_default().borrow_mut();
        let at = match threads.iter().position(|(a, _)| *a == driver.authority) {
            Some(at) => at,
            None => {
                threads.push((driver.authority.clone(), VecDeque::new()));
                threads.len() - 1
            }
        };
        let idle = &mut threads[at].1;
        while idle.len() >= MAX_IDLE
            || idle
                .front()
                .is_some_and(|i| i.since.elapsed() > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle {
            driver,
            since: Instant::now(),
        });
    }
}

/// How sending on a connection failed.
enum Failure {
    /// The connection closed before the request went out.
    Unsent(Box<Request<Full<Bytes>>>),
    /// The request went out (or may have), and no response came.
    Lost,
}

/// Sends `request` (an absolute `http://` URL) on a pooled connection to its upstream, or a
/// new one.
pub(super) async fn request(
    pools: &Arc<Pools>,
    mut request: Request<Full<Bytes>>,
    connect_timeout: Duration,
) -> Result<Response<UpstreamBody>, SendError> {
    let authority = request
        .uri()
        .authority()
        .cloned()
        .ok_or_else(|| SendError::Connect("the URL has no host".into()))?;
    origin_form(&mut request, &authority);
    if let Some(driver) = pools.take(&authority) {
        match send(driver, request).await {
            Ok(response) => return Ok(response),
            Err(Failure::Unsent(unsent)) => request = *unsent,
            Err(Failure::Lost) => return Err(SendError::Failed),
        }
    }
    let driver = connect(pools, authority, connect_timeout).await?;
    send(driver, request).await.map_err(|_| SendError::Failed)
}

/// Sends `request` on `driver`'s connection, driving it until the response's head arrives.
async fn send(
    mut driver: Driver,
    request: Request<Full<Bytes>>,
) -> Result<Response<UpstreamBody>, Failure> {
    let ready = poll_fn(|cx| {
        driver.drive(cx);
        if driver.closed {
            return Poll::Ready(false);
        }
        driver.send.poll_ready(cx).map(|r| r.is_ok())
    })
    .await;
    if !ready {
        return Err(Failure::Unsent(Box::new(request)));
    }
    let mut pending = pin!(driver.send.try_send_request(request));
    let sent = poll_fn(|cx| {
        driver.drive(cx);
        pending.as_mut().poll(cx)
    })
    .await;
    match sent {
        Ok(response) => Ok(response.map(|body| UpstreamBody::driven(body, driver))),
        Err(mut e) => Err(e
            .take_message()
            .map_or(Failure::Lost, |r| Failure::Unsent(Box::new(r)))),
    }
}

async fn connect(
    pools: &Arc<Pools>,
    authority: Authority,
    timeout: Duration,
) -> Result<Driver, SendError> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Err(_) => return Err(SendError::ConnectTimeout),
        Ok(Err(e)) => return Err(SendError::Connect(format!("tcp connect error: {e}"))),
        Ok(Ok(tcp)) => tcp,
    };
    // Without it, a small write waits for the last one's acknowledgement (Nagle).
    let _ = tcp.set_nodelay(true);
    let (send, conn) = http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| SendError::Connect(describe(&e)))?;
    Ok(Driver {
        send,
        conn: Box::pin(conn),
        closed: false,
        authority,
        pools: Arc::downgrade(pools),
    })
}

/// Turns an absolute URL into the path a request to the upstream itself carries, with the
/// host in `Host`.
fn origin_form(request: &mut Request<Full<Bytes>>, authority: &Authority) {
    if !request.headers().contains_key(HOST) {
        let host = authority.as_str().rsplit('@').next().unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(host) {
            request.headers_mut().insert(HOST, value);
        }
    }
    let mut parts = Parts::default();
    parts.path_and_query = request.uri().path_and_query().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}
