//! Picks the implementations: store, providers, catalogue, payment provider.

use crate::config::Config;
use anyhow::Context;
use std::sync::Arc;
use tollgate_core::catalog::{Catalog, CatalogSource};
use tollgate_core::payments::Sandbox;
use tollgate_core::service::Accounts;
use tollgate_core::store::Store;
use tollgate_providers::demo::Demo;
use tollgate_providers::openai_compat::OpenAiCompat;
use tollgate_providers::secret::Redactor;
use tollgate_providers::Registry;

/// The catalogue files compiled into the binary.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "catalog/demo.toml",
        include_str!("../../../catalog/demo.toml"),
    ),
    (
        "catalog/openai.toml",
        include_str!("../../../catalog/openai.toml"),
    ),
];

pub async fn store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    tollgate_store::connect(config.database_url.as_str())
        .await
        .map_err(anyhow::Error::msg)
}

pub fn accounts(config: &Config, store: Arc<dyn Store>) -> Accounts {
    Accounts::new(store, Arc::new(Sandbox), config.settings.verified_grant)
}

pub fn providers(config: &Config) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    // Every configured provider secret is taken out of any provider's upstream text.
    let redactor = Arc::new(Redactor::new(
        config.openai.iter().map(|o| o.api_key.expose().clone()),
    ));
    if let Some(demo) = config.demo {
        registry.insert("demo", Arc::new(Demo::new(demo)));
    }
    if let Some(openai) = &config.openai {
        let adapter = OpenAiCompat::new(
            openai.base_url.as_str(),
            openai.api_key.expose().clone(),
            config.settings.upstream_timeouts.connect,
        )
        .map_err(anyhow::Error::msg)
        .context("cannot build the openai provider")?
        .with_redactor(redactor.clone());
        registry.insert("openai", Arc::new(adapter));
    }
    Ok(registry)
}

/// Loads every catalogue source (a priced model without a price is an error) and keeps the
/// routes whose provider is enabled; models left without a route are not listed.
pub fn catalog(config: &Config, registry: &Registry) -> anyhow::Result<Catalog> {
    let models = all_models(config)?
        .into_iter()
        .filter_map(|mut m| {
            m.routes.retain(|r| registry.contains(&r.provider));
            (!m.routes.is_empty()).then_some(m)
        })
        .collect();
    Ok(Catalog::from_models(models)?)
}

/// Every catalogue model, served or not: the prices the ledger check audits charges with.
pub fn full_catalog(config: &Config) -> anyhow::Result<Catalog> {
    Ok(Catalog::from_models(all_models(config)?)?)
}

fn all_models(config: &Config) -> anyhow::Result<Vec<tollgate_core::catalog::Model>> {
    let mut sources: Vec<CatalogSource> = BUILT_IN
        .iter()
        .map(|(name, text)| CatalogSource {
            name: (*name).to_owned(),
            text: (*text).to_owned(),
        })
        .collect();
    for path in &config.catalog_files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read catalogue file {}", path.display()))?;
        sources.push(CatalogSource {
            name: path.display().to_string(),
            text,
        });
    }
    let mut models = Vec::new();
    for source in &sources {
        models.extend(source.parse(config.settings.rate)?);
    }
    Ok(models)
}
