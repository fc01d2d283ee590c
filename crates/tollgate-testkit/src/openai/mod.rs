//! A fake OpenAI chat-completions server on loopback, recording what it receives.

mod behaviour;
mod reply;
mod wire;

pub use behaviour::{Behaviour, DEFAULT_REPLY_TOKENS};

use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// One request the fake received.
struct Received {
    body: Value,
    authorization: Option<String>,
    /// The request line's target and the `Host` header, as sent.
    target: String,
    host: Option<String>,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    /// Behaviours for requests naming one upstream model, over `behaviour`.
    by_model: Mutex<Vec<(String, Behaviour)>>,
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
}

/// A real HTTP server on `127.0.0.1` answering `POST /v1/chat/completions` as scripted by a
/// [`Behaviour`]. It stops accepting connections when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeOpenAi {
    /// Binds a free loopback port and serves on a tokio task of the current runtime.
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let counted = shared.clone();
        let listener = listener.tap_io(move |_| {
            counted.connections.fetch_add(1, Ordering::Relaxed);
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake OpenAI server");
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The API root to configure an adapter with: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Changes how the following requests are answered.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Changes how the following requests for upstream model `model` are answered.
    pub fn set_behaviour_for(&self, model: &str, behaviour: Behaviour) {
        let mut by_model = self.shared.by_model.lock().unwrap();
        by_model.retain(|(m, _)| m != model);
        by_model.push((model.to_owned(), behaviour));
    }

    /// The JSON bodies received so far, in order (`null` for a body that is not JSON).
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// The `Authorization` header of each request received so far, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        let received = self.shared.received.lock().unwrap();
        received.iter().map(|r| r.authorization.clone()).collect()
    }

    /// Each request's target and `Host` header, as sent, in order.
    pub fn targets(&self) -> Vec<(String, Option<String>)> {
        let received = self.shared.received.lock().unwrap();
        received
            .iter()
            .map(|r| (r.target.clone(), r.host.clone()))
            .collect()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = text(header::AUTHORIZATION);
    let host = text(header::HOST);
    let ask = {
        let mut received = shared.received.lock().unwrap();
        let ask = wire::Ask::read(&body, received.len());
        received.push(Received {
            body,
            authorization,
            target: uri.to_string(),
            host,
        });
        ask
    };
    let model = ask.model.as_str().unwrap_or_default().to_owned();
    let for_model = shared
        .by_model
        .lock()
        .unwrap()
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, b)| b.clone());
    let behaviour = for_model.unwrap_or_else(|| shared.behaviour.lock().unwrap().clone());
    reply::respond(behaviour, ask).await
}

/// A base URL (`http://127.0.0.1:PORT/v1`) on a port nothing listens on.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("bound address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}
