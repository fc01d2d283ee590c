//! Catalogue TOML: parsing, price conversion to credits, and fail-closed validation.

use super::model::{Model, ModelType, PriceList, RouteSpec};
use crate::money::CreditRate;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("catalogue {source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("catalogue model `{model}` is not tagged free and has no price for {unit}: refusing to serve it at cost 0")]
    MissingPrice { model: String, unit: &'static str },
    #[error("catalogue model `{model}`: price `{field}` = `{value}` is not a non-negative decimal USD amount")]
    BadPrice {
        model: String,
        field: &'static str,
        value: String,
    },
    #[error("catalogue model `{0}` has no routes")]
    NoRoutes(String),
    #[error("catalogue model `{model}` has unknown type `{kind}`")]
    UnknownType { model: String, kind: String },
    #[error("catalogue name `{0}` is used by two models")]
    DuplicateName(String),
}

/// One catalogue file's text and a name for error messages.
#[derive(Debug, Clone)]
pub struct CatalogSource {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    model: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    tags: Vec<String>,
    info: toml::Table,
    pricing: Option<RawPricing>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

/// USD per million units, as decimal strings (or TOML numbers).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    input_tokens: Option<toml::Value>,
    cached_input_tokens: Option<toml::Value>,
    output_tokens: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    provider: String,
    model: String,
    #[serde(default)]
    priority: i32,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl CatalogSource {
    /// Parses every model of this source; `rate` converts USD prices into credits.
    pub fn parse(&self, rate: CreditRate) -> Result<Vec<Model>, CatalogError> {
        let raw: RawFile = toml::from_str(&self.text).map_err(|e| CatalogError::Parse {
            source_name: self.name.clone(),
            message: e.to_string(),
        })?;
        raw.model.into_iter().map(|m| convert(m, rate)).collect()
    }
}

fn convert(raw: RawModel, rate: CreditRate) -> Result<Model, CatalogError> {
    let kind = match raw.kind.as_str() {
        "openai/chat-completions" | "chat-completion" => ModelType::Chat,
        other => {
            return Err(CatalogError::UnknownType {
                model: raw.id,
                kind: other.to_owned(),
            })
        }
    };
    if raw.routes.is_empty() {
        return Err(CatalogError::NoRoutes(raw.id));
    }
    let free = raw.tags.iter().any(|t| t == "free");
    let mut pricing_usd = Map::new();
    let price = match &raw.pricing {
        None if free => None,
        None => {
            return Err(CatalogError::MissingPrice {
                model: raw.id,
                unit: "input_tokens",
            })
        }
        Some(p) => {
            let field = |name: &'static str,
                         v: &Option<toml::Value>,
                         required: bool,
                         usd: &mut Map<String, Value>| {
                credits_per_million(&raw.id, name, v.as_ref(), required && !free, rate, usd)
            };
            let input = field("input_tokens", &p.input_tokens, true, &mut pricing_usd)?;
            let output = field("output_tokens", &p.output_tokens, true, &mut pricing_usd)?;
            let cached = field(
                "cached_input_tokens",
                &p.cached_input_tokens,
                false,
                &mut pricing_usd,
            )?;
            Some(PriceList {
                input: input.unwrap_or(0),
                output: output.unwrap_or(0),
                cached_input: cached.or(input).unwrap_or(0),
            })
        }
    };
    let info: Map<String, Value> = serde_json::to_value(&raw.info)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let output_max = info
        .get("outputMax")
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    Ok(Model {
        id: raw.id,
        aliases: raw.aliases,
        kind,
        tags: raw.tags,
        info,
        output_max,
        price,
        pricing_usd,
        routes: raw
            .routes
            .into_iter()
            .map(|r| RouteSpec {
                provider: r.provider,
                upstream_model: r.model,
                priority: r.priority,
                weight: r.weight,
            })
            .collect(),
    })
}

fn credits_per_million(
    model: &str,
    field: &'static str,
    value: Option<&toml::Value>,
    required: bool,
    rate: CreditRate,
    usd: &mut Map<String, Value>,
) -> Result<Option<i64>, CatalogError> {
    let text = match value {
        None if required => {
            return Err(CatalogError::MissingPrice {
                model: model.to_owned(),
                unit: field,
            })
        }
        None => return Ok(None),
        Some(toml::Value::String(s)) => s.trim().to_owned(),
        Some(toml::Value::Integer(i)) => i.to_string(),
        Some(toml::Value::Float(f)) => f.to_string(),
        Some(other) => other.to_string(),
    };
    let bad = || CatalogError::BadPrice {
        model: model.to_owned(),
        field,
        value: text.clone(),
    };
    let dec = Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| bad())?;
    if dec.is_sign_negative() {
        return Err(bad());
    }
    let credits = (dec * Decimal::from(rate.0))
        .ceil()
        .to_i64()
        .ok_or_else(bad)?;
    usd.insert(field.to_owned(), Value::String(dec.normalize().to_string()));
    Ok(Some(credits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Model>, CatalogError> {
        CatalogSource {
            name: "t".into(),
            text: text.into(),
        }
        .parse(CreditRate::default())
    }

    const ROUTE: &str = "[[model.routes]]\nprovider = \"demo\"\nmodel = \"x\"\n";

    #[test]
    fn converts_usd_per_million_to_credits_exactly() {
        let m = parse(&format!(
            "[[model]]\nid = \"a/b\"\ntype = \"openai/chat-completions\"\ninfo = {{ name = \"B\", outputMax = 100 }}\n\
             pricing = {{ input_tokens = \"0.15\", output_tokens = 0.6, cached_input_tokens = \"7.5e-2\" }}\n{ROUTE}"
        ))
        .unwrap();
        assert_eq!(
            m[0].price,
            Some(PriceList {
                input: 300_000,
                cached_input: 150_000,
                output: 1_200_000
            })
        );
        assert_eq!(m[0].output_max, 100);
    }

    #[test]
    fn a_priced_model_without_a_price_is_refused() {
        let e = parse(&format!(
            "[[model]]\nid = \"a/b\"\ntype = \"openai/chat-completions\"\ninfo = {{}}\n{ROUTE}"
        ))
        .unwrap_err();
        assert!(matches!(e, CatalogError::MissingPrice { .. }), "{e}");
        let e = parse(&format!(
            "[[model]]\nid = \"a/b\"\ntype = \"openai/chat-completions\"\ninfo = {{}}\npricing = {{ input_tokens = \"1\" }}\n{ROUTE}"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            CatalogError::MissingPrice {
                model: "a/b".into(),
                unit: "output_tokens"
            }
        );
        let e = parse(&format!(
            "[[model]]\nid = \"a/b\"\ntype = \"openai/chat-completions\"\ninfo = {{}}\npricing = {{ input_tokens = \"-1\", output_tokens = \"1\" }}\n{ROUTE}"
        ))
        .unwrap_err();
        assert!(matches!(e, CatalogError::BadPrice { .. }));
        // A free model needs no price.
        assert!(parse(&format!(
            "[[model]]\nid = \"a/b\"\ntype = \"openai/chat-completions\"\ntags = [\"free\"]\ninfo = {{}}\n{ROUTE}"
        ))
        .is_ok());
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse(&format!("[[model]]\nid = \"a\"\ntype = \"openai/chat-completions\"\ninfo = {{}}\ncolour = 1\n{ROUTE}"))
            .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
