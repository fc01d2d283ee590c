//! A complete (non-streamed) chat-completions response, kept as the bytes the upstream sent.
//!
//! A gateway reads two things from a response, its `usage` and that it has `choices`, and
//! changes two, `model` and `meta`. Parsing it into a `serde_json::Value` tree and writing the
//! tree out again costs an allocation per field and per string; here the top-level object is
//! read as borrowed raw values, and the reply is written from them with those two fields
//! replaced.

use super::Usage;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// A response checked to be a JSON object with a `choices` array.
#[derive(Clone)]
pub struct ChatCompletion {
    raw: Vec<u8>,
    usage: Option<Usage>,
}

impl fmt::Debug for ChatCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChatCompletion({} bytes, {:?})",
            self.raw.len(),
            self.usage
        )
    }
}

/// The top-level fields of an object, in order, values unparsed.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Fields<'a> {
    fn parse(raw: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(raw).map_err(|e| format!("response is not a JSON object: {e}"))
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

impl ChatCompletion {
    /// Checks the response and reads its usage (`None` when absent or not an object).
    pub fn parse(raw: Vec<u8>) -> Result<Self, String> {
        let fields = Fields::parse(&raw)?;
        if !fields
            .get("choices")
            .is_some_and(|c| c.get().starts_with('['))
        {
            return Err("response has no `choices` array".into());
        }
        let usage = fields
            .get("usage")
            .and_then(|u| serde_json::from_str::<Value>(u.get()).ok())
            .and_then(|u| Usage::from_openai(Some(&u)));
        Ok(Self { raw, usage })
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
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }

    /// Appends the text of every choice's message (content and tool calls) to `out`: what a
    /// response without usage is charged by.
    pub fn message_text(&self, out: &mut String) {
        let Some(choices) = Fields::parse(&self.raw)
            .ok()
            .and_then(|f| f.get("choices"))
            .and_then(|c| serde_json::from_str::<Value>(c.get()).ok())
        else {
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

    /// The response with `model` set to `model` and a `meta` field holding `meta` (a JSON
    /// object), every other field as the upstream sent it.
    pub fn render(&self, model: &str, meta: &Value) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 96);
        out.push(b'{');
        let mut model_written = false;
        if let Ok(fields) = Fields::parse(&self.raw) {
            for (key, value) in &fields.0 {
                if key == "meta" || (key == "model" && model_written) {
                    continue;
                }
                if out.len() > 1 {
                    out.push(b',');
                }
                write_str(&mut out, key);
                out.push(b':');
                if key == "model" {
                    write_str(&mut out, model);
                    model_written = true;
                } else {
                    out.extend_from_slice(value.get().as_bytes());
                }
            }
        }
        if !model_written {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"model\":");
            write_str(&mut out, model);
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"meta\":");
        // Writing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, meta);
        out.push(b'}');
        out
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
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
        let out: Value =
            serde_json::from_slice(&c.render("tollgate/m", &json!({"usage": {"credits_used": 7}})))
                .unwrap();
        assert_eq!(
            out,
            json!({"id":"c1","model":"tollgate/m","choices":[{"message":{"content":"hé\"i"}}],
                   "x":[1,2.50,null],"we\"ird":true,"meta":{"usage":{"credits_used":7}}})
        );
        let bare = ChatCompletion::parse(br#"{"choices":[]}"#.to_vec()).unwrap();
        let out: Value = serde_json::from_slice(&bare.render("m", &json!({}))).unwrap();
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
