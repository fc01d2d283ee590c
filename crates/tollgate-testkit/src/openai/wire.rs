//! OpenAI's chat-completions wire format: reading a request, building replies and chunks.

use bytes::Bytes;
use serde_json::{json, Value};

const WORDS: &[&str] = &[
    "the", "fake", "upstream", "answers", "over", "loopback", "with", "words",
];
const CREATED: u64 = 1_700_000_000;

/// The end of every OpenAI stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// What a request asks for, read the way OpenAI reads it.
pub(crate) struct Ask {
    pub id: String,
    pub model: Value,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub prompt_tokens: u64,
}

impl Ask {
    pub fn read(body: &Value, index: usize) -> Self {
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64));
        Self {
            id: format!("chatcmpl-fake-{index}"),
            model: body.get("model").cloned().unwrap_or(Value::Null),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body.pointer("/stream_options/include_usage")
                == Some(&Value::Bool(true)),
            max_tokens,
            prompt_tokens: (prompt_chars(body) / 4).max(1),
        }
    }

    /// The reply's words (one token each, the first without a leading space) and its
    /// finish reason when the request wants `reply_tokens` of them.
    pub fn words(&self, reply_tokens: u32) -> (Vec<String>, &'static str) {
        let wanted = u64::from(reply_tokens);
        let n = self.max_tokens.map_or(wanted, |m| m.min(wanted));
        let words = (0..n as usize)
            .map(|i| {
                let w = WORDS[i % WORDS.len()];
                if i == 0 {
                    w.to_owned()
                } else {
                    format!(" {w}")
                }
            })
            .collect();
        (words, if n < wanted { "length" } else { "stop" })
    }

    /// A whole `chat.completion` object.
    pub fn completion(&self, words: &[String], finish: &str, usage: Option<Value>) -> Value {
        let mut body = json!({
            "id": self.id, "object": "chat.completion", "created": CREATED, "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.concat(), "refusal": null},
                "logprobs": null,
                "finish_reason": finish,
            }],
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        body
    }

    /// A `chat.completion.chunk` with one choice; `usage: null` when usage was asked for.
    pub fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut chunk = self.chunk_with(json!([{
            "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish,
        }]));
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The last chunk of a stream that asked for usage: no choices, only `usage`.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        let mut chunk = self.chunk_with(json!([]));
        chunk["usage"] = usage;
        chunk
    }

    fn chunk_with(&self, choices: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": CREATED,
            "model": self.model, "system_fingerprint": "fp_fake", "choices": choices,
        })
    }
}

/// An OpenAI `usage` object.
pub(crate) fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// One server-sent event carrying `value`.
pub(crate) fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Characters of every message's text content (string or text parts).
fn prompt_chars(body: &Value) -> u64 {
    let messages = body.get("messages").and_then(Value::as_array);
    let contents = messages
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content"));
    let chars = |s: &str| s.chars().count() as u64;
    contents
        .map(|c| match c {
            Value::String(s) => chars(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(chars)
                .sum(),
            _ => 0,
        })
        .sum()
}
