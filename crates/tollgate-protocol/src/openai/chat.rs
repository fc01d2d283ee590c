//! Validation of an OpenAI chat-completions request, keeping the body for forwarding.

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

/// A validated chat-completions request. `body` is the client's object, forwarded upstream
/// with only the fields tollgate owns rewritten.
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
    pub messages: Vec<Message>,
    pub body: Map<String, Value>,
}

/// The parts of a message that count toward the prompt.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub role: String,
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
    /// Parses and validates raw JSON bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ChatRequestError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed(e.to_string()))?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Self, ChatRequestError> {
        let body = match value {
            Value::Object(map) => map,
            other => return Err(BodyError::field("body", "object", &other).into()),
        };
        let model = match body.get("model") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => {
                return Err(BodyError::Field {
                    field: "model".into(),
                    expected: "non-empty string".into(),
                    received: "empty string".into(),
                }
                .into())
            }
            Some(other) => return Err(BodyError::field("model", "string", other).into()),
            None => return Err(BodyError::missing("model", "string").into()),
        };
        let messages = parse_messages(body.get("messages"))?;
        let has_image = messages.iter().any(|m| m.images > 0);
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
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
            match body.get(field) {
                None | Some(Value::Null) | Some(Value::Number(_)) => {}
                Some(other) => return Err(BodyError::field(field, "number", other).into()),
            }
        }
        for (field, kind) in [("tools", "array"), ("response_format", "object")] {
            match (body.get(field), kind) {
                (None | Some(Value::Null), _) => {}
                (Some(Value::Array(_)), "array") | (Some(Value::Object(_)), "object") => {}
                (Some(other), _) => return Err(BodyError::field(field, kind, other).into()),
            }
        }
        Ok(Self {
            model,
            stream,
            include_usage,
            max_tokens,
            choices,
            has_image,
            messages,
            body,
        })
    }

    /// A local estimate of the prompt's tokens (messages, tools and framing).
    pub fn prompt_tokens(&self) -> u64 {
        let messages: u64 = self
            .messages
            .iter()
            .map(|m| {
                MESSAGE_OVERHEAD
                    + role_tokens(&m.role)
                    + tokens::count(&m.text)
                    + m.images * IMAGE_TOKENS
            })
            .sum();
        let tools = self
            .body
            .get("tools")
            .filter(|t| !t.is_null())
            .map(|t| tokens::count(&t.to_string()))
            .unwrap_or(0);
        messages + tools + 3
    }
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

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, BodyError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(BodyError::field(field, "boolean", other)),
    }
}

fn positive_int(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, BodyError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Ok(Some(v)),
            _ => Err(BodyError::Field {
                field: field.into(),
                expected: "integer >= 1".into(),
                received: n.to_string(),
            }),
        },
        Some(other) => Err(BodyError::field(field, "integer", other)),
    }
}

fn parse_messages(value: Option<&Value>) -> Result<Vec<Message>, ChatRequestError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(BodyError::Field {
                field: "messages".into(),
                expected: "non-empty array".into(),
                received: "empty array".into(),
            }
            .into())
        }
        Some(other) => return Err(BodyError::field("messages", "array", other).into()),
        None => return Err(BodyError::missing("messages", "array").into()),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_message(i, item))
        .collect()
}

fn parse_message(i: usize, item: &Value) -> Result<Message, ChatRequestError> {
    let at = |f: &str| format!("messages[{i}].{f}");
    let obj = item
        .as_object()
        .ok_or_else(|| BodyError::field(format!("messages[{i}]"), "object", item))?;
    let role = match obj.get("role") {
        Some(Value::String(r)) => r.clone(),
        Some(other) => return Err(BodyError::field(at("role"), "string", other).into()),
        None => return Err(BodyError::missing(at("role"), "string").into()),
    };
    if !ROLES.contains(&role.as_str()) {
        return Err(ChatRequestError::Unsupported(format!(
            "Unsupported value: `{}` role `{role}` is not supported; expected one of {}",
            at("role"),
            ROLES.join(", ")
        )));
    }
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
    fn malformed_json_is_reported() {
        let e = ChatRequest::parse(b"{\"model\": ").unwrap_err();
        assert!(matches!(e, ChatRequestError::Body(BodyError::Malformed(_))));
    }
}
