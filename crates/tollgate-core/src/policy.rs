//! Policy: may this principal call this model, and what may the call cost at most.

use crate::accounts::{Account, Tier};
use crate::catalog::{Catalog, Model, PriceList};
use crate::error::Error;
use crate::keys::{ApiKey, KeyKind};
use crate::money::Credits;
use crate::settings::Settings;
use crate::store::FreeTierCheck;
use std::sync::Arc;
use tollgate_protocol::openai::{ChatRequest, Usage};

/// Who is calling: the key and its account.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: ApiKey,
    pub account: Account,
}

/// An admitted chat request and the bounds of its cost.
#[derive(Debug, Clone)]
pub struct Admission {
    pub model: Arc<Model>,
    pub price: PriceList,
    /// Locally counted prompt tokens, with the safety margin.
    pub prompt_tokens: u64,
    /// Locally counted prompt tokens, without the margin (for usage an upstream omits).
    pub counted_prompt_tokens: u64,
    /// Output tokens per choice the request may produce before the hold lowers it.
    pub max_output: u64,
    pub choices: u64,
    /// The prompt plus one output token per choice: below this the request is refused.
    pub min: Credits,
    /// The prompt plus the full output allowance.
    pub max: Credits,
    pub free_tier: Option<FreeTierCheck>,
}

impl Admission {
    /// The output limit per choice that a hold of `held` credits pays for.
    pub fn output_for(&self, held: Credits) -> u64 {
        if held >= self.max {
            return self.max_output;
        }
        (self.price.affordable_output(held, self.prompt_tokens) / self.choices.max(1))
            .clamp(1, self.max_output)
    }
}

/// Checks key kind, scope, model, tier and free-tier rules, and computes the hold bounds.
pub fn admit(
    settings: &Settings,
    catalog: &Catalog,
    who: &Principal,
    req: &ChatRequest,
) -> Result<Admission, Error> {
    require_model_scope(&who.key, "model:chat")?;
    let model = catalog
        .get(&req.model)
        .ok_or_else(|| Error::ModelNotFound(req.model.clone()))?
        .clone();
    let tier = who.account.tier();
    if tier == Tier::Free && !model.is_free() {
        return Err(Error::TierModelForbidden {
            model: model.id.clone(),
            billing_url: settings.billing_url.clone(),
        });
    }
    let mut max_output = req
        .max_tokens
        .unwrap_or(model.output_max)
        .min(model.output_max)
        .max(1);
    let free_tier = if tier == Tier::Free {
        if req.has_image {
            return Err(Error::Unsupported(
                "Image attachments in chat messages are not available on the free tier. Add a billing method (no charge) to unlock them.".into(),
            ));
        }
        max_output = max_output.min(settings.free_tier.max_output_tokens);
        Some(FreeTierCheck {
            hourly_limit: settings.free_tier.hourly_requests,
            max_in_flight: settings.free_tier.max_in_flight,
        })
    } else {
        None
    };
    let raw_prompt = req.prompt_tokens();
    let prompt_tokens =
        raw_prompt + (raw_prompt * u64::from(settings.prompt_margin_percent)).div_ceil(100);
    let price = model.price();
    let choices = req.choices.max(1);
    let cost = |output: u64| {
        price.chat_cost(&Usage {
            prompt_tokens,
            completion_tokens: output.saturating_mul(choices),
            cached_tokens: 0,
        })
    };
    Ok(Admission {
        min: cost(1),
        max: cost(max_output),
        model,
        price,
        prompt_tokens,
        counted_prompt_tokens: raw_prompt,
        max_output,
        choices,
        free_tier,
    })
}

/// Management keys never call models; regular keys need the endpoint's scope.
pub fn require_model_scope(key: &ApiKey, scope: &str) -> Result<(), Error> {
    if key.kind == KeyKind::Management {
        return Err(Error::ScopeForbidden(
            "Management keys cannot call models. Use a regular API key for inference.".into(),
        ));
    }
    if !key.allows(scope) {
        return Err(Error::ScopeForbidden(format!(
            "This key lacks the `{scope}` scope required by this endpoint."
        )));
    }
    Ok(())
}
