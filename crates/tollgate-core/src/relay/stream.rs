//! A streamed reply: forwards chunks, settles when the upstream finishes, then sends the
//! chunk carrying `meta.usage` and `[DONE]` (so the charge is durable before the last bytes).

use super::chat::{error_code, provider_error};
use super::ticket::{Outcome, Ticket};
use crate::money::CreditRate;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use tollgate_protocol::openai::chunk::{delivered_text, empty_chunk};
use tollgate_protocol::openai::Usage;
use tollgate_providers::ChunkStream;

struct State {
    /// `None` once settled; dropping it unsettled charges what was delivered.
    ticket: Option<Ticket>,
    first: Option<Value>,
    rest: ChunkStream,
    include_usage: bool,
    model: String,
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

pub(crate) fn sse_reply(
    ticket: Ticket,
    first: Value,
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
                Some(Ok(mut chunk)) => {
                    let bill = ticket.bill_mut();
                    if let Some(u) = Usage::from_openai(chunk.get("usage")) {
                        bill.upstream_usage = Some(u);
                    }
                    if let Some(id) = chunk.get("id").and_then(Value::as_str) {
                        if st.id != id {
                            st.id = id.to_owned();
                        }
                    }
                    if let Some(c) = chunk.get("created").and_then(Value::as_i64) {
                        st.created = c;
                    }
                    let empty = chunk.get("choices").and_then(Value::as_array).is_none_or(Vec::is_empty);
                    if empty {
                        st.ticket = Some(ticket);
                        continue;
                    }
                    let before = bill.delivered.len();
                    delivered_text(&chunk, &mut bill.delivered);
                    if bill.first_token_ms.is_none() && bill.delivered.len() > before {
                        bill.first_token_ms = Some(u64::try_from(bill.started.elapsed().as_millis()).unwrap_or(u64::MAX));
                    }
                    if let Some(obj) = chunk.as_object_mut() {
                        obj.remove("usage");
                        obj.insert("model".into(), Value::String(st.model.clone()));
                    }
                    st.ticket = Some(ticket);
                    return Some((event(&chunk), st));
                }
                None => {
                    let out = match ticket.settle(Outcome::Done).await {
                        Ok((credits, usage)) => {
                            let mut last = empty_chunk(&st.id, &st.model, st.created);
                            if st.include_usage {
                                last.insert("usage".into(), usage.to_openai());
                            }
                            last.insert(
                                "meta".into(),
                                json!({"usage": {"credits_used": credits.0, "usd_spent": st.rate.usd_json(credits)}}),
                            );
                            let mut bytes = event(&Value::Object(last)).to_vec();
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
