//! The body-validation error: which field, what was expected, what was received.

use serde_json::Value;
use std::fmt;

/// A request body that does not match its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body is not JSON at all.
    Malformed(String),
    /// A field has the wrong type or value, or is missing.
    Field {
        field: String,
        expected: String,
        received: String,
    },
}

impl BodyError {
    pub fn field(field: impl Into<String>, expected: impl Into<String>, received: &Value) -> Self {
        Self::Field {
            field: field.into(),
            expected: expected.into(),
            received: json_kind(received).to_owned(),
        }
    }

    pub fn missing(field: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            expected: expected.into(),
            received: "undefined".to_owned(),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(detail) => {
                write!(
                    f,
                    "Body validation error: the body is not valid JSON ({detail})"
                )
            }
            Self::Field {
                field,
                expected,
                received,
            } => write!(
                f,
                "Body validation error: field `{field}`: expected {expected}, received {received}"
            ),
        }
    }
}

impl std::error::Error for BodyError {}

/// The name of a JSON value's type, as used in validation messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
