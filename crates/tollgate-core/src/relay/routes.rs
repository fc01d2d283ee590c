//! Route choice and failover: highest priority first, spread by weight, retry on retryable
//! errors, all within the request's one deadline.

use super::deadline::within;
use super::Inner;
use crate::catalog::{Model, RouteSpec};
use futures::StreamExt;
use rand::Rng;
use tokio::time::Instant;
use tollgate_protocol::openai::chunk::Chunk;
use tollgate_protocol::openai::{ChatCompletion, ChatRequest};
use tollgate_providers::error::Deadline;
use tollgate_providers::{ChatCall, ChatReply, ChunkStream, ProviderError};

/// An upstream answer that has started: a whole response, or a stream with its first chunk.
pub(crate) enum Upstream {
    Complete(ChatCompletion),
    Stream { first: Chunk, rest: ChunkStream },
}

/// The outcome of calling a model's routes.
pub(crate) struct Called {
    /// The provider that answered, or the last one tried.
    pub provider: Option<String>,
    pub result: Result<Upstream, ProviderError>,
}

/// Routes in the order to try them.
fn ordered(routes: &[RouteSpec]) -> Vec<&RouteSpec> {
    let mut rng = rand::thread_rng();
    let mut keyed: Vec<(i32, f64, &RouteSpec)> = routes
        .iter()
        .map(|r| {
            // Weighted random order within a priority (Efraimidis–Spirakis keys).
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            (r.priority, u.powf(1.0 / f64::from(r.weight.max(1))), r)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, r)| r).collect()
}

/// Calls the model's routes until one starts answering, a non-retryable error occurs or the
/// request's `deadline` passes. Whatever the provider, a call (its stream included) ends by
/// the deadline.
pub(crate) async fn call(
    inner: &Inner,
    model: &Model,
    req: &ChatRequest,
    output: u64,
    deadline: Instant,
) -> Called {
    let timeouts = inner.settings.upstream_timeouts;
    let mut called = Called {
        provider: None,
        result: Err(ProviderError::Connect("no enabled route".into())),
    };
    for route in ordered(&model.routes) {
        let Some(provider) = inner.providers.chat(&route.provider) else {
            continue;
        };
        if Instant::now() >= deadline {
            called.result = Err(ProviderError::Timeout(Deadline::Total));
            break;
        }
        called.provider = Some(route.provider.clone());
        let call = ChatCall {
            body: req.upstream_json(&route.upstream_model, output),
            stream: req.stream,
            timeouts,
            deadline,
        };
        let result = match tokio::time::timeout_at(deadline, provider.chat(call)).await {
            Err(_) => Err(ProviderError::Timeout(Deadline::Total)),
            Ok(Ok(ChatReply::Complete(c))) => Ok(Upstream::Complete(c)),
            Ok(Ok(ChatReply::Stream(rest))) => {
                first_event(rest, Instant::now() + timeouts.first_byte, deadline).await
            }
            Ok(Err(e)) => Err(e),
        };
        match result {
            Err(e) if e.is_retryable() => {
                tracing::warn!(provider = %route.provider, model = %model.id, error = %e, "route failed; trying the next");
                called.result = Err(e);
            }
            result => {
                called.result = result;
                break;
            }
        }
    }
    called
}

/// Waits for a stream's first chunk until `first_byte` (or the request's `deadline`).
async fn first_event(
    mut rest: ChunkStream,
    first_byte: Instant,
    deadline: Instant,
) -> Result<Upstream, ProviderError> {
    let until = first_byte.min(deadline);
    match tokio::time::timeout_at(until, rest.next()).await {
        Err(_) if until < deadline => Err(ProviderError::Timeout(Deadline::FirstByte)),
        Err(_) => Err(ProviderError::Timeout(Deadline::Total)),
        Ok(None) => Err(ProviderError::Cut),
        Ok(Some(Err(e))) => Err(e),
        Ok(Some(Ok(first))) => Ok(Upstream::Stream {
            first,
            rest: within(rest, deadline),
        }),
    }
}
