//! The outbound HTTP client every adapter shares, with TCP_NODELAY on every connection:
//! plain-HTTP upstreams on HTTP/1.1 connections driven by the task that reads them
//! ([`driven`]); TLS upstreams on hyper-util's pooled client (HTTP/1.1, and HTTP/2 where the
//! upstream offers it).
//!
//! Each server thread runs its own runtime, so each thread gets its own pools: a request is
//! sent on a connection that lives on the same thread, and no wake-up crosses threads.

mod driven;
mod response;

pub use response::UpstreamBody;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use thread_local::ThreadLocal;

type TlsPool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest response head or single read an upstream connection buffers.
const MAX_BUF: usize = 64 * 1024;
/// How long an unused connection is kept for the next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The upstream could not be reached (with what went wrong).
    Connect(String),
    /// Connected, then the connection closed or broke before a response.
    Failed,
}

/// A client whose connection attempts give up after `connect_timeout`, with connection pools
/// per thread that uses it.
pub struct HttpClient {
    plain: Arc<driven::Pools>,
    tls: ThreadLocal<TlsPool>,
    connect_timeout: Duration,
}

impl HttpClient {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            plain: Arc::new(driven::Pools::default()),
            tls: ThreadLocal::new(),
            connect_timeout,
        }
    }

    /// Sends `request` on this thread's pool for its scheme.
    pub async fn request(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<UpstreamBody>, SendError> {
        if request.uri().scheme() == Some(&hyper::http::uri::Scheme::HTTP) {
            return driven::request(&self.plain, request, self.connect_timeout).await;
        }
        let pool = self.tls.get_or(|| tls_pool(self.connect_timeout));
        match pool.request(request).await {
            Ok(response) => Ok(response.map(UpstreamBody::pooled)),
            Err(e) if is_connect_timeout(&e) => Err(SendError::ConnectTimeout),
            Err(e) if e.is_connect() => Err(SendError::Connect(describe(&e))),
            Err(_) => Err(SendError::Failed),
        }
    }
}

fn tls_pool(connect_timeout: Duration) -> TlsPool {
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
        .pool_idle_timeout(IDLE_TIMEOUT)
        .http1_max_buf_size(MAX_BUF)
        .build(https)
}

/// Whether a client error is a connect attempt that ran out of time.
fn is_connect_timeout(e: &hyper_util::client::legacy::Error) -> bool {
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

/// The error with its causes, which is where hyper says what actually went wrong.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
