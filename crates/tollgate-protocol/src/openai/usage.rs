//! Token usage as OpenAI reports it.

use crate::raw::pick;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Token counts of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's cache (a subset of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object; `None` when absent or not an object.
    pub fn from_openai(value: Option<&Value>) -> Option<Self> {
        let obj = value?.as_object()?;
        let num = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt_tokens = num(obj.get("prompt_tokens"));
        let completion_tokens = num(obj.get("completion_tokens"));
        let cached_tokens = obj
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(prompt_tokens);
        Some(Self {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        })
    }

    /// Reads an OpenAI `usage` object from its JSON text, as [`Usage::from_openai`] does from
    /// a `Value` (a count that is not a non-negative integer counts as 0), without building one.
    pub fn from_raw(text: &str) -> Option<Self> {
        let num = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let [prompt, completion, details] = pick(
            text,
            [
                "prompt_tokens",
                "completion_tokens",
                "prompt_tokens_details",
            ],
        )?;
        let prompt_tokens = num(prompt);
        let cached_tokens = details
            .and_then(|d| pick(d, ["cached_tokens"]))
            .map_or(0, |[cached]| num(cached))
            .min(prompt_tokens);
        Some(Self {
            prompt_tokens,
            completion_tokens: num(completion),
            cached_tokens,
        })
    }

    /// The OpenAI `usage` object for these counts.
    pub fn to_openai(self) -> Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_cached_tokens_and_clamps_them_to_the_prompt() {
        let u = Usage::from_openai(Some(&json!({
            "prompt_tokens": 10, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 50}
        })))
        .unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 10
            }
        );
        assert_eq!(Usage::from_openai(Some(&json!("x"))), None);
        assert_eq!(Usage::from_openai(None), None);
    }

    #[test]
    fn raw_text_reads_the_same_as_a_value() {
        for v in [
            json!({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 50}}),
            json!({"prompt_tokens": 7, "completion_tokens": 2.5, "total_tokens": 9, "prompt_tokens_details": null}),
            json!({"prompt_tokens": -3, "completion_tokens": "4", "prompt_tokens_details": {"cached_tokens": 2}}),
            json!({"completion_tokens": 1, "prompt_tokens_details": "x"}),
            json!({}),
            json!("x"),
            json!(null),
            json!([1]),
            json!({"prompt_tokens": 4, "prompt_tokens_details": [3]}),
        ] {
            assert_eq!(
                Usage::from_raw(&v.to_string()),
                Usage::from_openai(Some(&v)),
                "{v}"
            );
        }
        let repeated = r#"{"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens": 3}"#;
        assert_eq!(Usage::from_raw(repeated).map(|u| u.prompt_tokens), Some(3));
    }
}
