//! A complete (non-streamed) chat-completions response, kept as the text the upstream sent.
//!
//! A gateway reads two things from a response, its `usage` and that it has `choices`, and
//! changes two, `model` and `meta`: the top level is read as raw fields ([`RawObject`]) and
//! the reply written from them.

use super::Usage;
use crate::raw::{json_string, Edit, RawObject};
use serde_json::Value;
use std::fmt;

/// A response checked to be a JSON object with a `choices` array.
#[derive(Clone)]
pub struct ChatCompletion {
    obj: RawObject,
    usage: Option<Usage>,
}

impl fmt::Debug for ChatCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChatCompletion({} bytes, {:?})",
            self.obj.text().len(),
            self.usage
        )
    }
}

impl ChatCompletion {
    /// Checks the response and reads its usage (`None` when absent or not an object).
    pub fn parse(raw: Vec<u8>) -> Result<Self, String> {
        let obj = RawObject::from_bytes(raw)
            .map_err(|e| format!("response is not a JSON object: {e}"))?;
        if !obj.get("choices").is_some_and(|c| c.starts_with('[')) {
            return Err("response has no `choices` array".into());
        }
        let usage = obj.get("usage").and_then(Usage::from_raw);
        Ok(Self { obj, usage })
    }

    /// A response built locally (the demo provider).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        Self::parse(serde_json::to_vec(value).map_err(|e| e.to_string())?)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The response as a `Value` (for tests and diagnostics).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.obj.text()).unwrap_or(Value::Null)
    }

    /// Appends the text of every choice's message (content and tool calls) to `out`: what a
    /// response without usage is charged by.
    pub fn message_text(&self, out: &mut String) {
        let Some(choices) = self.obj.decode::<Value>("choices") else {
            return;
        };
        for choice in choices.as_array().into_iter().flatten() {
            if let Some(text) = choice.pointer("/message/content").and_then(Value::as_str) {
                out.push_str(text);
            }
            if let Some(calls) = choice.pointer("/message/tool_calls") {
                out.push_str(&calls.to_string());
            }
        }
    }

    /// The response with `model` set to `model` and a `meta` field holding `meta` (the JSON
    /// text of an object), every other field as the upstream sent it.
    pub fn render(&self, model: &str, meta: &[u8]) -> Vec<u8> {
        let model = json_string(model);
        let mut out = Vec::with_capacity(self.obj.text().len() + 96);
        self.obj.write_to(
            &mut out,
            |k| match k {
                "model" => Edit::Replace(&model),
                "meta" => Edit::Replace(meta),
                _ => Edit::Keep,
            },
            &[("model", &model), ("meta", meta)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_usage_and_refuses_a_response_without_choices() {
        let c = ChatCompletion::parse(
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#
                .to_vec(),
        )
        .unwrap();
        assert_eq!(
            c.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                cached_tokens: 0
            })
        );
        assert!(ChatCompletion::parse(br#"{"choices":{}}"#.to_vec()).is_err());
        assert!(ChatCompletion::parse(br#"{"id":"x"}"#.to_vec()).is_err());
        assert!(ChatCompletion::parse(b"[1]".to_vec()).is_err());
        assert!(ChatCompletion::parse(b"{\"choices\":[".to_vec()).is_err());
        let no_usage = ChatCompletion::parse(br#"{"choices":[],"usage":"n/a"}"#.to_vec()).unwrap();
        assert_eq!(no_usage.usage(), None);
    }

    #[test]
    fn renders_with_model_and_meta_replaced_and_everything_else_kept() {
        let raw = br#"{"id":"c1","model":"up","meta":{"x":1},"choices":[{"message":{"content":"h\u00e9\"i"}}],"x":[1,2.50,null],"model":"again","we\"ird":true}"#;
        let c = ChatCompletion::parse(raw.to_vec()).unwrap();
        let meta = br#"{"usage": {"credits_used": 7}}"#;
        let out: Value = serde_json::from_slice(&c.render("tollgate/m", meta)).unwrap();
        assert_eq!(
            out,
            json!({"id":"c1","model":"tollgate/m","meta":{"usage":{"credits_used":7}},
                   "choices":[{"message":{"content":"hé\"i"}}],"x":[1,2.50,null],"we\"ird":true})
        );
        let bare = ChatCompletion::parse(br#"{"choices":[]}"#.to_vec()).unwrap();
        let out: Value = serde_json::from_slice(&bare.render("m", b"{}")).unwrap();
        assert_eq!(out, json!({"choices":[],"model":"m","meta":{}}));
    }

    #[test]
    fn collects_message_text_and_tool_calls() {
        let c = ChatCompletion::parse(
            br#"{"choices":[{"message":{"content":"ab"}},{"message":{"content":null,"tool_calls":[{"id":"t"}]}}]}"#.to_vec(),
        )
        .unwrap();
        let mut text = String::new();
        c.message_text(&mut text);
        assert_eq!(text, r#"ab[{"id":"t"}]"#);
    }
}
