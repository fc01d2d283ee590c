//! One catalogue model: identity, public info, price list and routes.

use crate::money::Credits;
use serde_json::{Map, Value};
use tollgate_protocol::openai::Usage;

/// The endpoint family a model is served through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Chat,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "openai/chat-completions",
        }
    }
}

/// Prices in integer credits per million units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceList {
    pub input: i64,
    pub cached_input: i64,
    pub output: i64,
}

impl PriceList {
    /// Cost of a chat usage: ceil(sum(units × price per million) / 1,000,000).
    pub fn chat_cost(&self, usage: &Usage) -> Credits {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        let micro = i128::from(fresh) * i128::from(self.input)
            + i128::from(cached) * i128::from(self.cached_input)
            + i128::from(usage.completion_tokens) * i128::from(self.output);
        Credits(i64::try_from(ceil_div(micro, 1_000_000)).unwrap_or(i64::MAX))
    }

    /// Output tokens that `budget` credits buy after `prompt_tokens` of input.
    pub fn affordable_output(&self, budget: Credits, prompt_tokens: u64) -> u64 {
        let prompt = i128::from(prompt_tokens) * i128::from(self.input);
        let left = i128::from(budget.0) * 1_000_000 - prompt;
        if left <= 0 {
            return 0;
        }
        if self.output <= 0 {
            return u64::MAX;
        }
        u64::try_from(left / i128::from(self.output)).unwrap_or(u64::MAX)
    }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    if a <= 0 {
        0
    } else {
        (a + b - 1) / b
    }
}

/// An upstream route: a provider id and the model name it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub provider: String,
    pub upstream_model: String,
    pub priority: i32,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    pub aliases: Vec<String>,
    pub kind: ModelType,
    pub tags: Vec<String>,
    /// Public info as listed (`name`, `developer`, `description`, `contextLength`, `outputMax`, …).
    pub info: Map<String, Value>,
    pub output_max: u64,
    /// `None` only for free models, which cost nothing.
    pub price: Option<PriceList>,
    /// The operator's USD prices per million units, for display.
    pub pricing_usd: Map<String, Value>,
    pub routes: Vec<RouteSpec>,
}

impl Model {
    pub fn is_free(&self) -> bool {
        self.tags.iter().any(|t| t == "free")
    }

    /// The price list to bill with (all zero for free models).
    pub fn price(&self) -> PriceList {
        if self.is_free() {
            PriceList::default()
        } else {
            self.price.unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_once_over_the_sum() {
        // $10 / $30 per 1M tokens at 2,000,000 credits per USD.
        let p = PriceList {
            input: 20_000_000,
            cached_input: 10_000_000,
            output: 60_000_000,
        };
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 0,
        };
        assert_eq!(p.chat_cost(&u), Credits(200 + 300));
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 0,
            cached_tokens: 4,
        };
        assert_eq!(p.chat_cost(&u), Credits(6 * 20 + 4 * 10));
        let cheap = PriceList {
            input: 300_000,
            cached_input: 150_000,
            output: 1_200_000,
        };
        let u = Usage {
            prompt_tokens: 3,
            completion_tokens: 1,
            cached_tokens: 0,
        };
        // 3 × 0.3 + 1 × 1.2 = 2.1 credits → 3
        assert_eq!(cheap.chat_cost(&u), Credits(3));
    }

    #[test]
    fn affordable_output_never_exceeds_the_budget() {
        let p = PriceList {
            input: 20_000_000,
            cached_input: 0,
            output: 60_000_000,
        };
        assert_eq!(p.affordable_output(Credits(1000), 20), 10);
        assert_eq!(p.affordable_output(Credits(399), 20), 0);
        let n = p.affordable_output(Credits(12_345), 17);
        let u = Usage {
            prompt_tokens: 17,
            completion_tokens: n,
            cached_tokens: 0,
        };
        assert!(p.chat_cost(&u) <= Credits(12_345));
        let u = Usage {
            prompt_tokens: 17,
            completion_tokens: n + 1,
            cached_tokens: 0,
        };
        assert!(p.chat_cost(&u) > Credits(12_345));
    }
}
