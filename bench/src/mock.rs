//! The mock upstream: a lean hyper 1.x server answering OpenAI chat completions from pre-rendered bodies.

use crate::mock_body::{Bodies, MockBody, Shape};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;

/// `tollgate-bench mock`: what the mock listens on and how it answers.
#[derive(clap::Args, Clone, Debug)]
pub struct MockArgs {
    /// Address to listen on; port 0 picks one. The first line on stdout is `listening ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Pause before the response headers, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_us: u64,
    /// Content chunks in a streamed reply.
    #[arg(long, default_value_t = 16)]
    pub chunks: usize,
    /// Pause between two events of a streamed reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    #[arg(long, default_value_t = 8)]
    pub prompt_tokens: u64,
    #[arg(long, default_value_t = 16)]
    pub completion_tokens: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

impl MockArgs {
    /// The same settings as command-line arguments, to start a mock process.
    pub fn to_args(&self) -> Vec<String> {
        [
            ("--listen", self.listen.to_string()),
            ("--latency-us", self.latency_us.to_string()),
            ("--chunks", self.chunks.to_string()),
            ("--chunk-delay-ms", self.chunk_delay_ms.to_string()),
            ("--prompt-tokens", self.prompt_tokens.to_string()),
            ("--completion-tokens", self.completion_tokens.to_string()),
            ("--threads", self.threads.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }
}

struct State {
    bodies: Bodies,
    latency: Duration,
    delay: Duration,
}

/// Runs the mock until the process is killed.
pub fn serve(args: MockArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(accept_loop(args))
}

async fn accept_loop(args: MockArgs) -> anyhow::Result<()> {
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    // A deep backlog: the slow-streams scenario opens thousands of connections at once.
    let listener = socket.listen(8192)?;
    let mut out = std::io::stdout();
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    let state = Arc::new(State {
        bodies: Bodies::render(Shape {
            chunks: args.chunks,
            prompt_tokens: args.prompt_tokens,
            completion_tokens: args.completion_tokens,
        }),
        latency: Duration::from_micros(args.latency_us),
        delay: Duration::from_millis(args.chunk_delay_ms),
    });
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, st: &State) -> Response<MockBody> {
    if req.method() != Method::POST || !req.uri().path().ends_with("/chat/completions") {
        return status(StatusCode::NOT_FOUND);
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    if !st.latency.is_zero() {
        tokio::time::sleep(st.latency).await;
    }
    if is_true(&body, b"\"stream\"") {
        let events = if is_true(&body, b"\"include_usage\"") {
            st.bodies.stream_with_usage.clone()
        } else {
            st.bodies.stream_plain.clone()
        };
        let mut res = Response::new(MockBody::events(events, st.delay));
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return res;
    }
    let mut res = Response::new(MockBody::Full(Some(st.bodies.completion.clone())));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn status(code: StatusCode) -> Response<MockBody> {
    let mut res = Response::new(MockBody::Full(None));
    *res.status_mut() = code;
    res
}

/// Whether the JSON object `body` has `key` (with its quotes) set to `true`. A byte scan
/// instead of a parse: the requests come from our load generator and from tollgate's
/// serializer, and the mock must cost next to nothing.
fn is_true(body: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = find(&body[from..], key) {
        let rest = &body[from + at + key.len()..];
        let rest = trim_start(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            return trim_start(rest).starts_with(b"true");
        }
        from += at + key.len();
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::is_true;

    #[test]
    fn reads_the_stream_flags() {
        let b = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(is_true(b, b"\"stream\""));
        assert!(is_true(b, b"\"include_usage\""));
        let b = br#"{"stream_options": {"include_usage" : false}, "stream" : true}"#;
        assert!(is_true(b, b"\"stream\""));
        assert!(!is_true(b, b"\"include_usage\""));
        assert!(!is_true(br#"{"stream":false}"#, b"\"stream\""));
        assert!(!is_true(br#"{"model":"m"}"#, b"\"stream\""));
    }
}
