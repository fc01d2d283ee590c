//! A streamed reply: forwards chunks, settles when the upstream finishes, then sends the
//! chunk carrying `meta.usage` and `[DONE]` (so the charge is durable before the last bytes).

use super::chat::{error_code, provider_error};
use super::ticket::{Outcome, Ticket};
use crate::money::CreditRate;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::task::Poll;
use tollgate_protocol::openai::chunk::{empty_chunk, Chunk};
use tollgate_protocol::raw::json_string;
use tollgate_providers::{ChunkStream, ProviderError};

/// Most bytes of events gathered into one write.
const GATHER_MAX: usize = 32 * 1024;

/// Turns of the thread's other tasks a gathering stream waits for the upstream's next chunk.
const GATHER_TURNS: u32 = 2;

struct State {
    /// `None` once settled; dropping it unsettled charges what was delivered.
    ticket: Option<Ticket>,
    first: Option<Chunk>,
    rest: ChunkStream,
    include_usage: bool,
    model: String,
    /// `model` as a JSON string, written into every chunk.
    model_json: Vec<u8>,
    rate: CreditRate,
    id: String,
    created: i64,
    /// Whether an event went out: the first goes alone, at once.
    sent: bool,
}

/// The upstream's next item if it comes while the thread's other ready tasks have
/// [`GATHER_TURNS`] turns, else `None`.
///
/// The upstream connection's task hands its response over one HTTP chunk at a time, a turn
/// or two apart, even when the upstream sent a burst of events in one packet. Waiting those
/// turns gathers the burst into one write to the client instead of one write, and one
/// wake-up of the client, per event.
async fn within_turns(rest: &mut ChunkStream) -> Option<Option<Result<Chunk, ProviderError>>> {
    let mut turns = 0;
    futures::future::poll_fn(|cx| match rest.poll_next_unpin(cx) {
        Poll::Ready(item) => Poll::Ready(Some(item)),
        Poll::Pending if turns < GATHER_TURNS => {
            turns += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Appends `value` as one event.
fn push_event(value: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

/// Appends the event of the last chunk: `chunk` with a `meta` field holding `meta` (JSON
/// text).
fn push_last_event(chunk: &Map<String, Value>, meta: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` map into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, chunk);
    out.pop(); // the map's closing brace
    if !chunk.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(br#""meta":"#);
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(b"}\n\n");
}

pub(crate) fn sse_reply(
    ticket: Ticket,
    first: Chunk,
    rest: ChunkStream,
    include_usage: bool,
    model: String,
    rate: CreditRate,
) -> BoxStream<'static, Bytes> {
    let state = State {
        ticket: Some(ticket),
        first: Some(first),
        rest,
        include_usage,
        model_json: json_string(&model),
        model,
        rate,
        id: String::new(),
        created: 0,
        sent: false,
    };
    // Each item is the events that were ready: the first chunk alone, at once; then what the
    // upstream sent in one burst; the settled last chunk and `[DONE]` join the burst before.
    futures::stream::unfold(state, |mut st| async move {
        let mut ticket = st.ticket.take()?;
        let mut out = Vec::new();
        loop {
            let next = match st.first.take() {
                Some(first) => Some(Ok(first)),
                None if out.is_empty() => st.rest.next().await,
                None => match within_turns(&mut st.rest).await {
                    Some(next) => next,
                    None => break,
                },
            };
            match next {
                Some(Ok(chunk)) => {
                    let bill = ticket.bill_mut();
                    if let Some(u) = chunk.usage() {
                        bill.upstream_usage = Some(u);
                    }
                    if let Some(id) = chunk.id() {
                        if st.id != id {
                            st.id = id.into_owned();
                        }
                    }
                    if let Some(c) = chunk.created() {
                        st.created = c;
                    }
                    if !chunk.has_choices() {
                        continue;
                    }
                    let before = bill.delivered.len();
                    chunk.delivered_text(&mut bill.delivered);
                    if bill.first_token_ms.is_none() && bill.delivered.len() > before {
                        bill.first_token_ms = Some(u64::try_from(bill.started.elapsed().as_millis()).unwrap_or(u64::MAX));
                    }
                    chunk.write_event(&st.model_json, &mut out);
                    if !st.sent || out.len() >= GATHER_MAX {
                        st.sent = true;
                        break;
                    }
                }
                None => {
                    match ticket.settle(Outcome::Done).await {
                        Ok((credits, usage)) => {
                            let mut last = empty_chunk(&st.id, &st.model, st.created);
                            if st.include_usage {
                                last.insert("usage".into(), usage.to_openai());
                            }
                            let meta = st.rate.usage_meta(credits);
                            push_last_event(&last, &meta, &mut out);
                            out.extend_from_slice(b"data: [DONE]\n\n");
                        }
                        Err(e) => push_event(&json!({"error": {"message": e.to_string(), "type": "server_error", "code": "internal_error"}}), &mut out),
                    }
                    return Some((Bytes::from(out), st));
                }
                Some(Err(e)) => {
                    let code = error_code(&e);
                    let nothing = ticket.bill_mut().delivered.is_empty();
                    let outcome = if nothing { Outcome::Failed(code) } else { Outcome::Cut(code) };
                    let message = provider_error(&e).to_string();
                    if let Err(e) = ticket.settle(outcome).await {
                        tracing::error!(error = %e, "settling a cut stream failed");
                    }
                    let body = json!({"error": {"message": message, "type": "upstream_error", "code": code}});
                    push_event(&body, &mut out);
                    return Some((Bytes::from(out), st));
                }
            }
        }
        st.ticket = Some(ticket);
        Some((Bytes::from(out), st))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_event_carries_meta_as_written() {
        let chunk = empty_chunk("c1", "tollgate/m", 7);
        let meta = r#"{"usage":{"credits_used":3,"usd_spent":0.0000015}}"#;
        let mut event = b"data: {}\n\n".to_vec();
        push_last_event(&chunk, meta, &mut event);
        let event = event.strip_prefix(b"data: {}\n\n").unwrap();
        let text = std::str::from_utf8(event).unwrap();
        let json = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert!(json.ends_with(&format!(r#","meta":{meta}}}"#)), "{json}");
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["meta"]["usage"]["credits_used"], 3);
        let mut bare = Vec::new();
        push_last_event(&Map::new(), "{}", &mut bare);
        assert_eq!(bare, b"data: {\"meta\":{}}\n\n");
    }
}
