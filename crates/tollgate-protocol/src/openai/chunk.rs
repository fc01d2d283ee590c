//! Chat-completion stream chunks: read once as raw fields, for the text they deliver and
//! their usage, and written out again with tollgate's `model`; and tollgate's own last chunk.

use super::Usage;
use crate::raw::{string, Edit, RawObject};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// One `chat.completion.chunk` object, as the upstream sent it.
#[derive(Debug, Clone)]
pub struct Chunk {
    obj: RawObject,
    usage: Option<Usage>,
}

/// The parts of a choice that deliver text; strings are read lazily from their raw JSON, so
/// an unexpected type is ignored rather than failing the chunk.
#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

fn push_str(raw: Option<&RawValue>, out: &mut String) {
    if let Some(s) = raw
        .filter(|r| r.get().starts_with('"'))
        .and_then(|r| serde_json::from_str::<Cow<'_, str>>(r.get()).ok())
    {
        out.push_str(&s);
    }
}

impl Chunk {
    /// Parses one event's data, which must be a JSON object.
    pub fn parse(data: String) -> Result<Self, String> {
        let obj = RawObject::parse(data).map_err(|e| e.to_string())?;
        let usage = obj.get("usage").and_then(Usage::from_raw);
        Ok(Self { obj, usage })
    }

    /// A chunk built locally (the demo provider).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        Self::parse(value.to_string())
    }

    /// The chunk as a `Value` (for tests and diagnostics).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.obj.text()).unwrap_or(Value::Null)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn id(&self) -> Option<Cow<'_, str>> {
        string(&self.obj, "id")
    }

    pub fn created(&self) -> Option<i64> {
        self.obj.decode("created")
    }

    /// The message of an error event (an `error` object and no `choices`), which some
    /// upstreams send mid-stream instead of a status.
    pub fn error_message(&self) -> Option<String> {
        if self.obj.get("choices").is_some() {
            return None;
        }
        let error = self.obj.decode::<Value>("error")?;
        Some(
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("stream error")
                .to_owned(),
        )
    }

    /// Whether the chunk has at least one choice (the usage chunk at the end has none).
    pub fn has_choices(&self) -> bool {
        self.obj
            .get("choices")
            .and_then(|c| c.strip_prefix('['))
            .is_some_and(|rest| !rest.trim_start().starts_with(']'))
    }

    /// Appends the text the chunk delivers across its choices (content, refusal, reasoning
    /// and tool-call names and arguments), used to count delivered tokens when a stream is cut.
    pub fn delivered_text(&self, out: &mut String) {
        let Some(choices) = self.obj.get("choices") else {
            return;
        };
        match serde_json::from_str::<Vec<Choice<'_>>>(choices) {
            Ok(choices) => {
                for delta in choices.iter().filter_map(|c| c.delta.as_ref()) {
                    for field in [
                        delta.content,
                        delta.refusal,
                        delta.reasoning_content,
                        delta.reasoning,
                    ] {
                        push_str(field, out);
                    }
                    if let Some(calls) = delta.tool_calls {
                        if let Ok(calls) = serde_json::from_str::<Value>(calls.get()) {
                            tool_call_text(&calls, out);
                        }
                    }
                }
            }
            // A choice of another shape: read what can be read.
            Err(_) => {
                if let Ok(Value::Array(choices)) = serde_json::from_str::<Value>(choices) {
                    for delta in choices.iter().filter_map(|c| c.get("delta")) {
                        for field in ["content", "refusal", "reasoning_content", "reasoning"] {
                            if let Some(s) = delta.get(field).and_then(Value::as_str) {
                                out.push_str(s);
                            }
                        }
                        if let Some(calls) = delta.get("tool_calls") {
                            tool_call_text(calls, out);
                        }
                    }
                }
            }
        }
    }

    /// Appends the chunk as one server-sent event, with `model` set to `model_json` (a JSON
    /// string) and without its `usage` (tollgate sends usage in its own last chunk).
    pub fn write_event(&self, model_json: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.obj.text().len() + 16);
        out.extend_from_slice(b"data: ");
        self.obj.write_to(
            out,
            |k| match k {
                "model" => Edit::Replace(model_json),
                "usage" => Edit::Drop,
                _ => Edit::Keep,
            },
            &[("model", model_json)],
        );
        out.extend_from_slice(b"\n\n");
    }
}

fn tool_call_text(calls: &Value, out: &mut String) {
    for call in calls.as_array().into_iter().flatten() {
        if let Some(f) = call.get("function") {
            for field in ["name", "arguments"] {
                if let Some(s) = f.get(field).and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
        }
    }
}

/// A chunk with no choices, as OpenAI sends for the usage block at the end of a stream.
pub fn empty_chunk(id: &str, model: &str, created: i64) -> Map<String, Value> {
    let value = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(v: Value) -> Chunk {
        Chunk::from_value(&v).expect("an object")
    }

    fn text(c: &Chunk) -> String {
        let mut s = String::new();
        c.delivered_text(&mut s);
        s
    }

    #[test]
    fn collects_content_reasoning_and_tool_arguments() {
        let c = chunk(json!({"choices": [
            {"delta": {"content": "Hel", "reasoning_content": "r"}},
            {"delta": {"refusal": null, "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\":1}"}}]}},
            {"index": 2}
        ]}));
        assert_eq!(text(&c), "Helrf{\"a\":1}");
        assert!(c.has_choices());
        // Odd shapes are read as far as they go.
        let odd = chunk(
            json!({"choices": [{"delta": {"content": ["x"]}}, {"delta": "y"}, {"delta": {"content": "ok"}}]}),
        );
        assert_eq!(text(&odd), "ok");
    }

    #[test]
    fn reads_usage_id_created_and_errors() {
        let c = chunk(
            json!({"id": "c1", "created": 7, "choices": [ ], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}),
        );
        assert!(!c.has_choices());
        assert_eq!(c.id().as_deref(), Some("c1"));
        assert_eq!(c.created(), Some(7));
        assert_eq!(c.usage().map(|u| u.completion_tokens), Some(3));
        assert_eq!(chunk(json!({"usage": null})).usage(), None);
        assert_eq!(
            chunk(json!({"error": {"message": "overloaded"}}))
                .error_message()
                .as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            chunk(json!({"error": {}, "choices": []})).error_message(),
            None
        );
        assert!(Chunk::parse("[]".into()).is_err());
    }

    #[test]
    fn events_carry_tollgate_s_model_and_no_usage() {
        let c = chunk(
            json!({"id": "c1", "model": "up", "choices": [{"delta": {"content": "é"}}], "usage": null}),
        );
        let mut event = b"data: [earlier]\n\n".to_vec();
        c.write_event(br#""tollgate/m""#, &mut event);
        let event = event.strip_prefix(b"data: [earlier]\n\n").unwrap();
        let text = std::str::from_utf8(event).unwrap();
        let data = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(data).unwrap(),
            json!({"id": "c1", "model": "tollgate/m", "choices": [{"delta": {"content": "é"}}]})
        );
    }
}
