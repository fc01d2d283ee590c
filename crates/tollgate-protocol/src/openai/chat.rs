//! Validation of an OpenAI chat-completions request, keeping the body's text for forwarding.

use crate::raw::{json_string, Edit, RawObject};
use crate::tokens;
use crate::validate::{json_kind, BodyError};
use serde_json::{Map, Value};

/// Tokens counted per image part when the prompt is estimated (a high-detail tile budget).
const IMAGE_TOKENS: u64 = 765;
/// Per-message framing tokens in OpenAI's chat format.
const MESSAGE_OVERHEAD: u64 = 4;
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A validated chat-completions request. `body` is the client's object as it sent it,
/// forwarded upstream with only the fields tollgate owns rewritten (see [`Self::upstream_json`]).
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Number of choices requested (`n`).
    pub choices: u64,
    pub has_image: bool,
    pub body: RawObject,
    /// The local estimate of the prompt's tokens, counted once when the request is read.
    prompt_tokens: u64,
}

/// The parts of a message that count toward the prompt, read one message at a time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Message {
    /// One of the roles the format knows.
    pub role: &'static str,
    pub text: String,
    pub images: u64,
}

/// A validation failure: either a malformed body or a value the format does not support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatRequestError {
    Body(BodyError),
    Unsupported(String),
}

impl From<BodyError> for ChatRequestError {
    fn from(e: BodyError) -> Self {
        Self::Body(e)
    }
}

impl ChatRequest {
    /// Parses and validates raw JSON bytes. Only the top level is read into fields; the
    /// values tollgate does not look at stay text.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, ChatRequestError> {
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            // Not an object: say what it is, or why it is not JSON.
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|e| BodyError::Malformed(e.to_string()))?;
            return Err(BodyError::field("body", "object", &value).into());
        }
        let body = RawObject::from_bytes(bytes).map_err(BodyError::Malformed)?;
        Self::validate(body)
    }

    /// Validates a request already held as a JSON value.
    pub fn from_value(value: Value) -> Result<Self, ChatRequestError> {
        Self::parse(serde_json::to_vec(&value).map_err(|e| BodyError::Malformed(e.to_string()))?)
    }

    fn validate(body: RawObject) -> Result<Self, ChatRequestError> {
        let model = match field(&body, "model")? {
            Some(Value::String(s)) if !s.trim().is_empty() => s,
            Some(Value::String(_)) => {
                return Err(BodyError::Field {
                    field: "model".into(),
                    expected: "non-empty string".into(),
                    received: "empty string".into(),
                }
                .into())
            }
            Some(other) => return Err(BodyError::field("model", "string", &other).into()),
            None => return Err(BodyError::missing("model", "string").into()),
        };
        let mut has_image = false;
        let mut message_tokens = 0;
        each_message(&body, |_, m| {
            has_image |= m.images > 0;
            message_tokens += MESSAGE_OVERHEAD
                + role_tokens(m.role)
                + tokens::count(&m.text)
                + m.images * IMAGE_TOKENS;
            Ok(())
        })?;
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        let include_usage = match field(&body, "stream_options")?.as_ref() {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(
                        BodyError::field("stream_options.include_usage", "boolean", other).into(),
                    )
                }
            },
            Some(other) => return Err(BodyError::field("stream_options", "object", other).into()),
        };
        let max_completion = positive_int(&body, "max_completion_tokens")?;
        let max_tokens = max_completion.or(positive_int(&body, "max_tokens")?);
        let choices = positive_int(&body, "n")?.unwrap_or(1);
        if choices > 128 {
            return Err(ChatRequestError::Unsupported(
                "`n` must be at most 128".to_owned(),
            ));
        }
        for field in [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
        ] {
            match self::field(&body, field)? {
                None | Some(Value::Null) | Some(Value::Number(_)) => {}
                Some(other) => return Err(BodyError::field(field, "number", &other).into()),
            }
        }
        for (field, kind) in [("tools", "array"), ("response_format", "object")] {
            match (body.get(field).map(str::as_bytes), kind) {
                (None | Some(b"null"), _) => {}
                (Some([b'[', ..]), "array") | (Some([b'{', ..]), "object") => {}
                (Some(_), _) => {
                    let other = self::field(&body, field)?.unwrap_or(Value::Null);
                    return Err(BodyError::field(field, kind, &other).into());
                }
            }
        }
        let prompt_tokens = message_tokens + tools_tokens(&body) + 3;
        Ok(Self {
            model,
            stream,
            include_usage,
            max_tokens,
            choices,
            has_image,
            body,
            prompt_tokens,
        })
    }

    /// The text of the last `user` message (the messages are read again, one at a time).
    pub fn last_user_text(&self) -> String {
        let mut last = String::new();
        let _ = each_message(&self.body, |_, m| {
            if m.role == "user" {
                last = m.text;
            }
            Ok(())
        });
        last
    }

    /// A local estimate of the prompt's tokens (messages, tools and framing).
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// The body to send upstream: the client's text with the model named as the upstream
    /// knows it, the output limit set, and (streams) usage asked for in the last chunk.
    pub fn upstream_json(&self, upstream_model: &str, output: u64) -> Vec<u8> {
        let limit_field = if self.body.get("max_completion_tokens").is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let model = json_string(upstream_model);
        let limit = output.to_string();
        let options = self.stream.then(|| {
            let mut o = match field(&self.body, "stream_options").ok().flatten() {
                Some(Value::Object(o)) => o,
                _ => Map::new(),
            };
            o.insert("include_usage".into(), Value::Bool(true));
            serde_json::to_vec(&o).unwrap_or_else(|_| br#"{"include_usage":true}"#.to_vec())
        });
        let mut extra: Vec<(&str, &[u8])> =
            vec![("model", &model), (limit_field, limit.as_bytes())];
        if let Some(o) = &options {
            extra.push(("stream_options", o));
        }
        let mut out = Vec::with_capacity(self.body.text().len() + 64);
        self.body.write_to(
            &mut out,
            |name| match name {
                "model" => Edit::Replace(&model),
                "stream_options" => match &options {
                    Some(o) => Edit::Replace(o),
                    None => Edit::Keep,
                },
                n if n == limit_field => Edit::Replace(limit.as_bytes()),
                _ => Edit::Keep,
            },
            &extra,
        );
        out
    }
}

/// Field `name` of the body as a JSON value; `None` when absent. A value that is JSON but
/// not one a `Value` can hold (a number out of range, such as `1e400`) makes the body malformed.
fn field(body: &RawObject, name: &str) -> Result<Option<Value>, BodyError> {
    body.get(name)
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| BodyError::Malformed(format!("field `{name}`: {e}")))
}

/// The tokens of the tool definitions.
fn tools_tokens(body: &RawObject) -> u64 {
    field(body, "tools")
        .ok()
        .flatten()
        .filter(|t| !t.is_null())
        .map(|t| tokens::count(&t.to_string()))
        .unwrap_or(0)
}

/// The tokens of a role name: one of [`ROLES`], counted once.
fn role_tokens(role: &str) -> u64 {
    static COUNTS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    let counts = COUNTS.get_or_init(|| ROLES.iter().map(|r| tokens::count(r)).collect());
    match ROLES.iter().position(|r| *r == role) {
        Some(i) => counts[i],
        None => tokens::count(role),
    }
}

fn optional_bool(body: &RawObject, name: &str) -> Result<Option<bool>, BodyError> {
    match field(body, name)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(BodyError::field(name, "boolean", &other)),
    }
}

fn positive_int(body: &RawObject, name: &str) -> Result<Option<u64>, BodyError> {
    match field(body, name)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Ok(Some(v)),
            _ => Err(BodyError::Field {
                field: name.into(),
                expected: "integer >= 1".into(),
                received: n.to_string(),
            }),
        },
        Some(other) => Err(BodyError::field(name, "integer", &other)),
    }
}

/// Reads `messages` one message at a time, calling `each` with each one's position and
/// parts: only one message at a time is a JSON tree, so a body of many messages costs little
/// more memory than its own text.
fn each_message(
    body: &RawObject,
    mut each: impl FnMut(usize, Message) -> Result<(), ChatRequestError>,
) -> Result<(), ChatRequestError> {
    let Some(text) = body.get("messages") else {
        return Err(BodyError::missing("messages", "array").into());
    };
    if !text.trim_start().starts_with('[') {
        let other = field(body, "messages")?.unwrap_or(Value::Null);
        return Err(BodyError::field("messages", "array", &other).into());
    }
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let read = serde::Deserializer::deserialize_seq(
        &mut de,
        EachMessage {
            each: &mut each,
            failed: &mut failed,
        },
    );
    match (read, failed) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(BodyError::Malformed(format!("field `messages`: {e}")).into()),
        (Ok(0), None) => Err(BodyError::Field {
            field: "messages".into(),
            expected: "non-empty array".into(),
            received: "empty array".into(),
        }
        .into()),
        (Ok(_), None) => Ok(()),
    }
}

/// The `messages` array's visitor: each element is read as a JSON value, checked, handed on
/// and dropped before the next is read.
struct EachMessage<'a, F> {
    each: &'a mut F,
    /// Why the visit stopped, when a message was refused.
    failed: &'a mut Option<ChatRequestError>,
}

impl<'de, F> serde::de::Visitor<'de> for EachMessage<'_, F>
where
    F: FnMut(usize, Message) -> Result<(), ChatRequestError>,
{
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut i = 0;
        loop {
            let item = match seq.next_element::<Value>() {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(i),
                Err(e) => {
                    *self.failed =
                        Some(BodyError::Malformed(format!("field `messages[{i}]`: {e}")).into());
                    return Err(e);
                }
            };
            let outcome = parse_message(i, &item).and_then(|m| (self.each)(i, m));
            if let Err(e) = outcome {
                *self.failed = Some(e);
                return Err(serde::de::Error::custom("a message was refused"));
            }
            i += 1;
        }
    }
}

fn parse_message(i: usize, item: &Value) -> Result<Message, ChatRequestError> {
    let at = |f: &str| format!("messages[{i}].{f}");
    let obj = item
        .as_object()
        .ok_or_else(|| BodyError::field(format!("messages[{i}]"), "object", item))?;
    let role = match obj.get("role") {
        Some(Value::String(r)) => r.as_str(),
        Some(other) => return Err(BodyError::field(at("role"), "string", other).into()),
        None => return Err(BodyError::missing(at("role"), "string").into()),
    };
    let Some(role) = ROLES.iter().copied().find(|r| *r == role) else {
        return Err(ChatRequestError::Unsupported(format!(
            "Unsupported value: `{}` role `{role}` is not supported; expected one of {}",
            at("role"),
            ROLES.join(", ")
        )));
    };
    let mut message = Message {
        role,
        ..Message::default()
    };
    match obj.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => message.text.push_str(s),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                read_part(&at(&format!("content[{j}]")), part, &mut message)?;
            }
        }
        Some(other) => return Err(BodyError::field(at("content"), "string or array", other).into()),
    }
    // Tool calls and names count toward the prompt as text.
    for extra in ["tool_calls", "function_call", "name"] {
        if let Some(v) = obj.get(extra).filter(|v| !v.is_null()) {
            message.text.push_str(&v.to_string());
        }
    }
    Ok(message)
}

fn read_part(path: &str, part: &Value, message: &mut Message) -> Result<(), ChatRequestError> {
    let obj = part
        .as_object()
        .ok_or_else(|| BodyError::field(path, "object", part))?;
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => return Err(BodyError::field(format!("{path}.type"), "string", other).into()),
        None => return Err(BodyError::missing(format!("{path}.type"), "string").into()),
    };
    match kind {
        "text" | "input_text" => match obj.get("text") {
            Some(Value::String(t)) => {
                message.text.push_str(t);
                Ok(())
            }
            Some(other) => Err(BodyError::field(format!("{path}.text"), "string", other).into()),
            None => Err(BodyError::missing(format!("{path}.text"), "string").into()),
        },
        "image_url" | "input_image" => {
            message.images += 1;
            Ok(())
        }
        "input_audio" | "file" | "refusal" => {
            message.text.push_str(&part.to_string());
            Ok(())
        }
        other => Err(ChatRequestError::Unsupported(format!(
            "Unsupported value: `{path}.type` `{other}` is not a supported content part ({})",
            json_kind(part)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        match ChatRequest::from_value(v).unwrap_err() {
            ChatRequestError::Body(b) => b.to_string(),
            ChatRequestError::Unsupported(m) => m,
        }
    }

    #[test]
    fn accepts_a_minimal_request_and_reads_limits() {
        let r = ChatRequest::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10, "max_completion_tokens": 7, "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert_eq!(r.max_tokens, Some(7));
        assert!(r.stream && r.include_usage && !r.has_image);
        assert!(r.prompt_tokens() >= 9);
    }

    #[test]
    fn names_the_field_expected_and_received() {
        assert_eq!(
            err(json!({"messages": []})),
            "Body validation error: field `model`: expected string, received undefined"
        );
        assert_eq!(
            err(json!({"model": 5, "messages": []})),
            "Body validation error: field `model`: expected string, received integer"
        );
        assert_eq!(
            err(json!({"model": "m", "messages": "hi"})),
            "Body validation error: field `messages`: expected array, received string"
        );
        assert_eq!(
            err(json!({"model": "m", "messages": [{"role": "user", "content": 3}]})),
            "Body validation error: field `messages[0].content`: expected string or array, received integer"
        );
        assert_eq!(
            err(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"})
            ),
            "Body validation error: field `max_tokens`: expected integer, received string"
        );
        assert_eq!(
            err(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
            ),
            "Body validation error: field `max_tokens`: expected integer >= 1, received 0"
        );
        assert!(err(json!([1])).contains("field `body`: expected object, received array"));
    }

    #[test]
    fn unknown_roles_are_unsupported_and_images_are_seen() {
        assert!(
            err(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}))
                .starts_with("Unsupported value: `messages[0].role` role `wizard`")
        );
        let r = ChatRequest::from_value(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
            ]}]}),
        )
        .unwrap();
        assert!(r.has_image);
        assert!(r.prompt_tokens() > IMAGE_TOKENS);
    }

    #[test]
    fn the_upstream_body_keeps_the_clients_text_and_sets_what_tollgate_owns() {
        let text = r#"{"model":"tollgate/x", "messages":[{"role":"user","content":"h\u00e9llo  there"}],
            "max_completion_tokens":900,"max_tokens":5,"stream":true,"stream_options":{"foo":1},"user":"u1"}"#;
        let r = ChatRequest::parse(text.as_bytes().to_vec()).unwrap();
        let out = r.upstream_json("gpt-up", 40);
        let out_text = String::from_utf8(out.clone()).unwrap();
        assert!(
            out_text.contains(r#"[{"role":"user","content":"h\u00e9llo  there"}]"#),
            "messages forwarded as sent: {out_text}"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-up");
        assert_eq!(v["max_completion_tokens"], 40);
        assert_eq!(
            v["max_tokens"], 5,
            "the field tollgate does not use is left as sent"
        );
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"foo": 1, "include_usage": true})
        );
        assert_eq!(v["user"], "u1");

        let plain = ChatRequest::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}]
        }))
        .unwrap();
        let v: Value = serde_json::from_slice(&plain.upstream_json("up", 7)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "up", "messages": [{"role": "user", "content": "x"}], "max_tokens": 7})
        );
    }

    #[test]
    fn bodies_that_are_not_objects_or_not_json_say_why() {
        for (body, expected) in [
            (
                &b" [1, 2]"[..],
                "field `body`: expected object, received array",
            ),
            (
                b"\"text\"",
                "field `body`: expected object, received string",
            ),
            (b"{\"model\": \"m\",}", "not valid JSON"),
            (b"{\"model\": \"\xff\"}", "not valid JSON"),
            (b"", "not valid JSON"),
            (
                b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":1e400}",
                "not valid JSON (field `temperature`",
            ),
            (
                b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"n\":-1e999}]}",
                "not valid JSON (field `messages[0]`",
            ),
        ] {
            let e = match ChatRequest::parse(body.to_vec()).unwrap_err() {
                ChatRequestError::Body(b) => b.to_string(),
                ChatRequestError::Unsupported(m) => m,
            };
            assert!(e.contains(expected), "{body:?}: {e}");
        }
    }

    #[test]
    fn many_messages_are_read_one_at_a_time_with_their_positions() {
        let mut messages: Vec<Value> = (0..1_000)
            .map(|i| serde_json::json!({"role": "user", "content": format!("message {i}")}))
            .collect();
        let r = ChatRequest::from_value(serde_json::json!({"model": "m", "messages": messages}))
            .unwrap();
        assert_eq!(r.last_user_text(), "message 999");
        assert!(r.prompt_tokens() > 1_000 * MESSAGE_OVERHEAD);
        messages[700] = serde_json::json!({"role": "user", "content": 7});
        assert!(err(serde_json::json!({"model": "m", "messages": messages}))
            .contains("`messages[700].content`"));
    }

    #[test]
    fn malformed_json_is_reported() {
        let e = ChatRequest::parse(b"{\"model\": ".to_vec()).unwrap_err();
        assert!(matches!(e, ChatRequestError::Body(BodyError::Malformed(_))));
    }
}
