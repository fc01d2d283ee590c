//! The outbound HTTP client every adapter shares: hyper with rustls (HTTP/1.1, and HTTP/2 where
//! the upstream offers it over TLS), pooled keep-alive connections and TCP_NODELAY.
//!
//! Each server thread runs its own runtime, so each thread gets its own pool: a request is
//! sent on a connection whose task lives on the same thread, and no wake-up crosses threads.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;
use thread_local::ThreadLocal;

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest response head or single read an upstream connection buffers.
const MAX_BUF: usize = 64 * 1024;

/// A client whose connection attempts give up after `connect_timeout`, with one connection
/// pool per thread that uses it.
pub struct HttpClient {
    pools: ThreadLocal<Pool>,
    connect_timeout: Duration,
}

impl HttpClient {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            pools: ThreadLocal::new(),
            connect_timeout,
        }
    }

    /// Sends `request` on this thread's pool.
    pub fn request(&self, request: hyper::Request<Full<Bytes>>) -> ResponseFuture {
        self.pools
            .get_or(|| pool(self.connect_timeout))
            .request(request)
    }
}

fn pool(connect_timeout: Duration) -> Pool {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http1_max_buf_size(MAX_BUF)
        .build(https)
}

/// Whether a client error is a connect attempt that ran out of time.
pub fn is_connect_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}
