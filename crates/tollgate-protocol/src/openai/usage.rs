//! Token usage as OpenAI reports it.

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
}
