//! One HTTP/1.1 keep-alive connection on hyper's client, and the pre-built request sent on it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The only path the harness calls.
pub const PATH: &str = "/v1/chat/completions";

/// Where requests go and what they carry, serialised once. No `Accept-Encoding` is sent.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub stream: bool,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Target {
    /// A chat-completions request for `model`; `key` becomes the bearer token. Fails for a
    /// key that no header can carry.
    pub fn chat(
        addr: SocketAddr,
        key: Option<&str>,
        model: &str,
        stream: bool,
    ) -> anyhow::Result<Self> {
        let mut req = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 16,
        });
        if stream {
            req["stream"] = true.into();
            req["stream_options"] = serde_json::json!({"include_usage": true});
        }
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::try_from(addr.to_string())?);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = key {
            let v = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                anyhow::anyhow!("the API key contains characters a header cannot carry")
            })?;
            headers.insert(AUTHORIZATION, v);
        }
        Ok(Self {
            addr,
            stream,
            uri: Uri::from_static(PATH),
            headers,
            body: Bytes::from(req.to_string()),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// When the first and the last body bytes of a successful reply arrived.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub first: Instant,
    pub last: Instant,
    /// tollgate's own part of the time before the reply's head, from its `Server-Timing`
    /// header (`gateway;dur=…`); `None` from the mock.
    pub gateway: Option<Duration>,
}

/// The `gateway` metric's duration in a `Server-Timing` value.
fn gateway_time(value: &[u8]) -> Option<Duration> {
    let value = std::str::from_utf8(value).ok()?;
    value.split(',').find_map(|metric| {
        let ms = metric.trim().strip_prefix("gateway;dur=")?;
        let ms: f64 = ms.parse().ok()?;
        (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1e3))
    })
}

/// One keep-alive connection, reopened after a failure.
#[derive(Default)]
pub struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Sends one request and reads the whole reply. A stream must end with `data: [DONE]`.
    /// `on_first` runs when the first body bytes arrive.
    pub async fn send(
        &mut self,
        target: &Target,
        timeout: Duration,
        on_first: impl FnOnce(),
    ) -> Result<Arrival, String> {
        let out = tokio::time::timeout(timeout, self.exchange(target, on_first)).await;
        let out = out.unwrap_or_else(|_| Err(format!("no complete reply within {timeout:?}")));
        if out.is_err() {
            self.sender = None;
        }
        out
    }

    async fn exchange(
        &mut self,
        target: &Target,
        on_first: impl FnOnce(),
    ) -> Result<Arrival, String> {
        // Wait for the connection to come back to idle after the previous reply.
        if let Some(s) = &mut self.sender {
            if s.is_closed() || s.ready().await.is_err() {
                self.sender = None;
            }
        }
        let sender = match &mut self.sender {
            Some(s) => s,
            None => self.sender.insert(connect(target.addr).await?),
        };
        let res = sender
            .send_request(target.request())
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = res.status();
        let gateway = res
            .headers()
            .get("server-timing")
            .and_then(|v| gateway_time(v.as_bytes()));
        let mut body = res.into_body();
        let mut first = None;
        let mut on_first = Some(on_first);
        let mut tail = Vec::with_capacity(32);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reply body failed: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if first.is_none() {
                first = Some(Instant::now());
                if let Some(f) = on_first.take() {
                    f();
                }
            }
            if target.stream || !status.is_success() {
                keep_tail(&mut tail, &data);
            }
        }
        let last = Instant::now();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&tail).trim()
            ));
        }
        if target.stream && !tail.ends_with(b"data: [DONE]\n\n") {
            return Err("stream ended without data: [DONE]".into());
        }
        let first = first.ok_or("empty reply body")?;
        Ok(Arrival {
            first,
            last,
            gateway,
        })
    }
}

/// Keeps the last 256 bytes seen.
fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    tail.extend_from_slice(data);
    if tail.len() > 256 {
        tail.drain(..tail.len() - 256);
    }
}

/// Loopback source addresses 127.0.0.2–127.0.0.251, taken in turn: each has its own
/// ephemeral ports, so ten thousand streams next to tollgate's own upstream connections and
/// the TIME_WAIT sockets of earlier phases never run the port range dry.
fn source_for(addr: SocketAddr) -> Option<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let n = NEXT.fetch_add(1, Ordering::Relaxed) % 250;
            Some(SocketAddr::from(([127, 0, 0, 2 + n as u8], 0)))
        }
        _ => None,
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = async {
        let Some(src) = source_for(addr) else {
            return TcpStream::connect(addr).await;
        };
        let socket = TcpSocket::new_v4()?;
        socket.bind(src)?;
        socket.connect(addr).await
    }
    .await
    .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_part_is_read_from_server_timing() {
        let v = b"upstream;dur=0.077, gateway;dur=0.021";
        assert_eq!(gateway_time(v), Some(Duration::from_micros(21)));
        assert_eq!(
            gateway_time(b"gateway;dur=1.5"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(gateway_time(b"upstream;dur=0.077"), None);
        assert_eq!(gateway_time(b"gateway;dur=-1"), None);
        assert_eq!(gateway_time(b"gateway;dur=x"), None);
    }
}
