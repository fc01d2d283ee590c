//! A streamed reply: forwards chunks, settles when the upstream finishes, then sends the
//! chunk carrying `meta.usage` and `[DONE]` (so the charge is durable before the last bytes).

use super::chat::{error_code, provider_error};
use super::ticket::{Outcome, Ticket};
use crate::error::Error;
use crate::money::{CreditRate, Credits};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{ready, Stream, StreamExt};
use serde_json::{json, Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tollgate_protocol::openai::chunk::{empty_chunk, Chunk};
use tollgate_protocol::openai::Usage;
use tollgate_protocol::raw::json_string;
use tollgate_providers::ChunkStream;

/// Most bytes of events gathered into one write.
const GATHER_MAX: usize = 32 * 1024;

/// Turns of the thread's other tasks a gathering stream waits for the upstream's next chunk.
const GATHER_TURNS: u32 = 2;

/// A settlement under way: the charge and usage, once committed.
type Settle = BoxFuture<'static, Result<(Credits, Usage), Error>>;

/// Why the stream is settling.
enum Ending {
    /// The upstream finished: the last events carry the usage and the charge.
    Done,
    /// The upstream failed: the last event is this error.
    Failed { message: String, code: &'static str },
}

/// The reply's events, as a hand-written stream: it keeps its state in place while it is
/// polled once per burst, instead of moving it into a new future per item.
struct Reply {
    /// `None` once settling; dropping it unsettled charges what was delivered.
    ticket: Option<Ticket>,
    /// The settlement under way (dropping it lets a task finish it), and why.
    settling: Option<(Settle, Ending)>,
    /// Events gathered for the next item.
    out: Vec<u8>,
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
    /// Set once the first event is handed over: the next poll first waits for the thread
    /// to look for I/O and run what it found, so that the first event is written, and other
    /// requests' first events go out, before this stream reads the rest of its burst.
    flush: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Turns of the thread's other tasks waited so far for the upstream's next chunk.
    turns: u32,
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

/// Each item is the events that were ready: the first chunk alone, at once; then what the
/// upstream sent in one burst; the settled last chunk and `[DONE]` join the burst before.
pub(crate) fn sse_reply(
    ticket: Ticket,
    first: Chunk,
    rest: ChunkStream,
    include_usage: bool,
    model: String,
    rate: CreditRate,
) -> BoxStream<'static, Bytes> {
    Box::pin(Reply {
        ticket: Some(ticket),
        settling: None,
        out: Vec::new(),
        first: Some(first),
        rest,
        include_usage,
        model_json: json_string(&model),
        model,
        rate,
        id: String::new(),
        created: 0,
        sent: false,
        flush: None,
        turns: 0,
    })
}

impl Stream for Reply {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let st = self.get_mut();
        if let Some(turn) = st.flush.as_mut() {
            ready!(turn.as_mut().poll(cx));
            st.flush = None;
        }
        loop {
            if let Some((settle, _)) = st.settling.as_mut() {
                let settled = ready!(settle.as_mut().poll(cx));
                let Some((_, ending)) = st.settling.take() else {
                    return Poll::Ready(None);
                };
                st.finish(ending, settled);
                return Poll::Ready(Some(st.take_out()));
            }
            let Some(ticket) = st.ticket.as_mut() else {
                return Poll::Ready(None);
            };
            let next = match st.first.take() {
                Some(first) => Some(Ok(first)),
                None => match st.rest.poll_next_unpin(cx) {
                    Poll::Ready(next) => {
                        st.turns = 0;
                        next
                    }
                    Poll::Pending if st.out.is_empty() => return Poll::Pending,
                    // An upstream connection that runs as a task of its own (a TLS upstream's)
                    // hands its response over one HTTP chunk at a time, a turn or two apart,
                    // even when the upstream sent a burst of events in one packet. Waiting
                    // those turns gathers the burst into one write to the client instead of
                    // one write, and one wake-up of the client, per event.
                    Poll::Pending if st.turns < GATHER_TURNS => {
                        st.turns += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Pending => {
                        st.turns = 0;
                        return Poll::Ready(Some(st.take_out()));
                    }
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
                        bill.first_token_ms = Some(
                            u64::try_from(bill.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        );
                    }
                    chunk.write_event(&st.model_json, &mut st.out);
                    if !st.sent || st.out.len() >= GATHER_MAX {
                        if !st.sent {
                            st.flush = Some(Box::pin(tokio::task::yield_now()));
                        }
                        st.sent = true;
                        return Poll::Ready(Some(st.take_out()));
                    }
                }
                None => st.settle(Outcome::Done, Ending::Done),
                Some(Err(e)) => {
                    let code = error_code(&e);
                    let nothing = ticket.bill_mut().delivered.is_empty();
                    let outcome = if nothing {
                        Outcome::Failed(code)
                    } else {
                        Outcome::Cut(code)
                    };
                    let message = provider_error(&e).to_string();
                    st.settle(outcome, Ending::Failed { message, code });
                }
            }
        }
    }
}

impl Reply {
    fn take_out(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.out))
    }

    /// Starts settling the ticket; the next turn of the loop polls it.
    fn settle(&mut self, outcome: Outcome, ending: Ending) {
        if let Some(ticket) = self.ticket.take() {
            self.settling = Some((Box::pin(ticket.settle(outcome)), ending));
        }
    }

    /// Appends the events that end the stream, once settled.
    fn finish(&mut self, ending: Ending, settled: Result<(Credits, Usage), Error>) {
        let out = &mut self.out;
        match (ending, settled) {
            (Ending::Done, Ok((credits, usage))) => {
                let mut last = empty_chunk(&self.id, &self.model, self.created);
                if self.include_usage {
                    last.insert("usage".into(), usage.to_openai());
                }
                let meta = self.rate.usage_meta(credits);
                push_last_event(&last, &meta, out);
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            (Ending::Done, Err(e)) => push_event(
                &json!({"error": {"message": e.to_string(), "type": "server_error", "code": "internal_error"}}),
                out,
            ),
            (Ending::Failed { message, code }, settled) => {
                if let Err(e) = settled {
                    tracing::error!(error = %e, "settling a cut stream failed");
                }
                let body =
                    json!({"error": {"message": message, "type": "upstream_error", "code": code}});
                push_event(&body, out);
            }
        }
    }
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
