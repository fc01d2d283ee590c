//! The built-in offline provider: deterministic replies, streaming at a set token rate,
//! usage reported like a real provider.

use crate::adapter::{ChatCall, ChatProvider, ChatReply};
use crate::error::ProviderError;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_protocol::openai::chunk::Chunk;
use tollgate_protocol::openai::{ChatCompletion, ChatRequest, Usage};
use tollgate_protocol::tokens;

const FILLER: &[&str] = &[
    "tollgate", "meters", "every", "token", "exactly", "once,", "holds", "credits", "before",
    "the", "call", "and", "settles", "after", "it,", "so", "the", "ledger", "always", "adds",
    "up.",
];

/// Requests larger than this are read on a blocking thread.
const PARSE_INLINE_MAX: usize = 256 * 1024;

/// Settings of the demo provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoConfig {
    /// Tokens streamed per second; 0 streams as fast as possible.
    pub tokens_per_second: u32,
    /// Length of a reply when the request allows it.
    pub reply_tokens: u32,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            tokens_per_second: 50,
            reply_tokens: 60,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Demo {
    config: DemoConfig,
}

impl Demo {
    pub fn new(config: DemoConfig) -> Self {
        Self { config }
    }
}

/// The reply's pieces (whole words, each one or more tokens) up to `natural` tokens, and
/// whether `limit` cut it short.
fn reply(said: &str, natural: u64, limit: u64) -> (Vec<String>, bool) {
    let opening = format!("Demo reply to \"{}\":", said.replace('\n', " "));
    let words = opening
        .split(' ')
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .into_iter()
        .chain(FILLER.iter().cycle().map(|w| (*w).to_owned()));
    let mut pieces = Vec::new();
    let mut used = 0u64;
    for (n, word) in words.enumerate() {
        let piece = if n == 0 { word } else { format!(" {word}") };
        let cost = tokens::count(&piece);
        if used + cost > natural {
            return (pieces, false);
        }
        if used + cost > limit {
            return (pieces, true);
        }
        used += cost;
        pieces.push(piece);
    }
    (pieces, false)
}

#[async_trait::async_trait]
impl ChatProvider for Demo {
    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        // Like a real model server, a long prompt is read off the threads serving others.
        let read = |body: Vec<u8>| {
            ChatRequest::parse(body).map(|request| {
                let said: String = request.last_user_text().chars().take(40).collect();
                (request, said)
            })
        };
        let parsed = if call.body.len() <= PARSE_INLINE_MAX {
            read(call.body)
        } else {
            let body = call.body;
            tokio::task::spawn_blocking(move || read(body))
                .await
                .map_err(|e| ProviderError::Invalid(format!("reading the request: {e}")))?
        };
        let (request, said) = parsed.map_err(|e| ProviderError::Status {
            status: 400,
            message: format!("{e:?}"),
            retry_after: None,
        })?;
        let natural = u64::from(self.config.reply_tokens.max(1));
        let limit = request.max_tokens.unwrap_or(natural);
        let model = request.model.clone();
        let (pieces, truncated) = reply(&said, natural, limit);
        let prompt_tokens = request.prompt_tokens();
        let completion_tokens: u64 = pieces.iter().map(|p| tokens::count(p)).sum();
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
        };
        let finish = if truncated { "length" } else { "stop" };
        let id = format!(
            "chatcmpl-demo{:x}",
            prompt_tokens * 7919 + completion_tokens
        );
        let created = chrono_like_now();
        if !call.stream {
            let body = json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": finish,
                    "message": {"role": "assistant", "content": pieces.concat(), "refusal": null}}],
                "usage": usage.to_openai(),
            });
            return ChatCompletion::from_value(&body)
                .map(ChatReply::Complete)
                .map_err(ProviderError::Invalid);
        }
        let delay = match self.config.tokens_per_second {
            0 => None,
            rate => Some(Duration::from_secs_f64(1.0 / f64::from(rate))),
        };
        let chunk = move |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        events.extend(
            pieces
                .into_iter()
                .map(|p| chunk(json!({"content": p}), Value::Null)),
        );
        events.push(chunk(json!({}), json!(finish)));
        let mut last = events[0].clone();
        last["choices"] = json!([]);
        last["usage"] = usage.to_openai();
        events.push(last);
        let stream =
            futures::stream::iter(events.into_iter().enumerate()).then(move |(i, ev)| async move {
                if let (Some(d), true) = (delay, i > 0) {
                    tokio::time::sleep(d).await;
                }
                Chunk::from_value(&ev).map_err(ProviderError::Invalid)
            });
        Ok(ChatReply::Stream(stream.boxed()))
    }
}

fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::Timeouts;

    fn call(max: Option<u64>, stream: bool) -> ChatCall {
        let mut body =
            json!({"model": "demo-chat", "messages": [{"role": "user", "content": "hello there"}]});
        if let Some(m) = max {
            body["max_tokens"] = json!(m);
        }
        let t = Duration::from_secs(5);
        ChatCall {
            body: serde_json::to_vec(&body).unwrap(),
            stream,
            timeouts: Timeouts {
                connect: t,
                first_byte: t,
                total: t,
            },
            deadline: tokio::time::Instant::now() + t,
        }
    }

    #[tokio::test]
    async fn replies_deterministically_within_the_limit() {
        let demo = Demo::new(DemoConfig {
            tokens_per_second: 0,
            reply_tokens: 60,
        });
        let ChatReply::Complete(reply) = demo.chat(call(Some(10), false)).await.unwrap() else {
            panic!()
        };
        let (body, usage) = (reply.value(), reply.usage().unwrap());
        assert_eq!(usage.completion_tokens, 10);
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        let ChatReply::Complete(again) = demo.chat(call(Some(10), false)).await.unwrap() else {
            panic!()
        };
        let again = again.value();
        assert_eq!(body["choices"], again["choices"]);
        let ChatReply::Complete(reply) = demo.chat(call(None, false)).await.unwrap() else {
            panic!()
        };
        let (body, usage) = (reply.value(), reply.usage());
        assert!(usage.unwrap().completion_tokens <= 60);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }

    #[tokio::test]
    async fn streams_content_then_usage() {
        let demo = Demo::new(DemoConfig {
            tokens_per_second: 0,
            reply_tokens: 20,
        });
        let ChatReply::Stream(s) = demo.chat(call(None, true)).await.unwrap() else {
            panic!()
        };
        let chunks: Vec<Chunk> = s.map(Result::unwrap).collect().await;
        let mut text = String::new();
        for c in &chunks {
            c.delivered_text(&mut text);
        }
        let usage = chunks.last().unwrap().usage().unwrap();
        assert_eq!(usage.completion_tokens, tokens::count(&text));
        assert!(usage.completion_tokens <= 20 && usage.completion_tokens > 5);
    }
}
