//! A streamed reply: forwards chunks, settles when the upstream finishes, then sends the
//! chunk carrying `meta.usage` and `[DONE]` (so the charge is durable before the last bytes).

use super::chat::{error_code, provider_error};
use super::ticket::{Outcome, Ticket};
use crate::money::CreditRate;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tollgate_protocol::openai::chunk::{empty_chunk, Chunk};
use tollgate_protocol::raw::json_string;
use tollgate_providers::ChunkStream;

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
}

fn event(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The event of the last chunk: `chunk` with a `meta` field holding `meta` (JSON text).
fn last_event(chunk: &Map<String, Value>, meta: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + meta.len());
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` map into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, chunk);
    out.pop(); // the map's closing brace
    if !chunk.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(br#""meta":"#);
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(b"}\n\n");
    out
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
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let mut ticket = st.ticket.take()?;
            let next = match st.first.take() {
                Some(v) => Some(Ok(v)),
                None => st.rest.next().await,
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
                        st.ticket = Some(ticket);
                        continue;
                    }
                    let before = bill.delivered.len();
                    chunk.delivered_text(&mut bill.delivered);
                    if bill.first_token_ms.is_none() && bill.delivered.len() > before {
                        bill.first_token_ms = Some(u64::try_from(bill.started.elapsed().as_millis()).unwrap_or(u64::MAX));
                    }
                    st.ticket = Some(ticket);
                    return Some((Bytes::from(chunk.to_event(&st.model_json)), st));
                }
                None => {
                    let out = match ticket.settle(Outcome::Done).await {
                        Ok((credits, usage)) => {
                            let mut last = empty_chunk(&st.id, &st.model, st.created);
                            if st.include_usage {
                                last.insert("usage".into(), usage.to_openai());
                            }
                            let meta = st.rate.usage_meta(credits);
                            let mut bytes = last_event(&last, &meta);
                            bytes.extend_from_slice(b"data: [DONE]\n\n");
                            Bytes::from(bytes)
                        }
                        Err(e) => event(&json!({"error": {"message": e.to_string(), "type": "server_error", "code": "internal_error"}})),
                    };
                    return Some((out, st));
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
                    return Some((event(&body), st));
                }
            }
        }
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
        let event = last_event(&chunk, meta);
        let text = std::str::from_utf8(&event).unwrap();
        let json = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert!(json.ends_with(&format!(r#","meta":{meta}}}"#)), "{json}");
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["meta"]["usage"]["credits_used"], 3);
        let bare = last_event(&Map::new(), "{}");
        assert_eq!(bare, b"data: {\"meta\":{}}\n\n");
    }
}
