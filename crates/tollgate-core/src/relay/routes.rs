//! Route choice and failover: highest priority first, spread by weight, retry on retryable errors.

use super::Inner;
use crate::catalog::{Model, RouteSpec};
use futures::StreamExt;
use rand::Rng;
use tollgate_protocol::openai::chunk::Chunk;
use tollgate_protocol::openai::{ChatCompletion, ChatRequest};
use tollgate_providers::error::Deadline;
use tollgate_providers::{ChatCall, ChatReply, ChunkStream, ProviderError};

/// An upstream answer that has started: a whole response, or a stream with its first chunk.
pub(crate) enum Upstream {
    Complete(ChatCompletion),
    Stream { first: Chunk, rest: ChunkStream },
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

/// Calls the model's routes until one starts answering or a non-retryable error occurs.
pub(crate) async fn call(
    inner: &Inner,
    model: &Model,
    req: &ChatRequest,
    output: u64,
) -> Result<Upstream, ProviderError> {
    let stream = req.stream;
    let timeouts = inner.settings.upstream_timeouts;
    let mut last = ProviderError::Connect("no enabled route".into());
    let routes = ordered(&model.routes);
    for route in routes {
        let Some(provider) = inner.providers.chat(&route.provider) else {
            continue;
        };
        let call = ChatCall {
            body: req.upstream_json(&route.upstream_model, output),
            stream,
            timeouts,
        };
        let result = match provider.chat(call).await {
            Ok(ChatReply::Complete(c)) => Ok(Upstream::Complete(c)),
            Ok(ChatReply::Stream(mut rest)) => {
                match tokio::time::timeout(timeouts.first_byte, rest.next()).await {
                    Err(_) => Err(ProviderError::Timeout(Deadline::FirstByte)),
                    Ok(None) => Err(ProviderError::Cut),
                    Ok(Some(Err(e))) => Err(e),
                    Ok(Some(Ok(first))) => Ok(Upstream::Stream { first, rest }),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(up) => return Ok(up),
            Err(e) if e.is_retryable() => {
                tracing::warn!(provider = %route.provider, model = %model.id, error = %e, "route failed; trying the next");
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
