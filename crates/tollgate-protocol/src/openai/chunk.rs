//! Chat-completion stream chunks: reading the text they deliver and building tollgate's own.

use serde_json::{json, Map, Value};

/// The text a chunk delivers across its choices (content, refusal, reasoning and tool-call
/// arguments), used to count delivered tokens when a stream is cut.
pub fn delivered_text(chunk: &Value, out: &mut String) {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return;
    };
    for choice in choices {
        let Some(delta) = choice.get("delta") else {
            continue;
        };
        for field in ["content", "refusal", "reasoning_content", "reasoning"] {
            if let Some(s) = delta.get(field).and_then(Value::as_str) {
                out.push_str(s);
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                if let Some(f) = call.get("function") {
                    for field in ["name", "arguments"] {
                        if let Some(s) = f.get(field).and_then(Value::as_str) {
                            out.push_str(s);
                        }
                    }
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

    #[test]
    fn collects_content_and_tool_arguments() {
        let mut s = String::new();
        delivered_text(
            &json!({"choices": [
                {"delta": {"content": "Hel"}},
                {"delta": {"tool_calls": [{"function": {"name": "f", "arguments": "{\"a\":1}"}}]}}
            ]}),
            &mut s,
        );
        assert_eq!(s, "Helf{\"a\":1}");
    }
}
