//! Layered configuration: compiled-in defaults → file → env (`TOLLGATE__SECTION__KEY`) →
//! flags, parsed strictly (unknown keys name the field) and validated into typed values.

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_core::money::{CreditRate, Credits};
use tollgate_core::settings::{FreeTier, Settings};
use tollgate_http::server::Limits;
use tollgate_http::state::BodyConfig;
use tollgate_providers::demo::DemoConfig;
use tollgate_providers::secret::{redact_url, ConfigUrl, Secret};
use tollgate_providers::Timeouts;

const DEFAULTS: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    database: RawDatabase,
    billing: RawBilling,
    free_tier: RawFreeTier,
    upstream: RawUpstream,
    node: RawNode,
    providers: RawProviders,
    catalog: RawCatalog,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    body_limit_bytes: u64,
    shutdown_grace_seconds: u64,
    threads: usize,
    first_byte_timeout_seconds: f64,
    header_timeout_seconds: f64,
    body_read_timeout_seconds: f64,
    max_connections: usize,
    max_connections_per_peer: usize,
    request_memory_limit_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    credits_per_usd: i64,
    verified_grant_credits: i64,
    low_balance_threshold_credits: i64,
    billing_url: String,
    prompt_margin_percent: u32,
    hold_lease_seconds: u64,
    reaper_interval_seconds: u64,
    payment_provider: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreeTier {
    hourly_requests: u32,
    max_in_flight: u32,
    max_output_tokens: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout_seconds: f64,
    first_byte_timeout_seconds: f64,
    total_timeout_seconds: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProviders {
    demo: RawDemo,
    openai: RawOpenAi,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemo {
    enabled: bool,
    tokens_per_second: u32,
    reply_tokens: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenAi {
    api_key: String,
    base_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    files: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
}

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub api_key: Secret<String>,
    pub base_url: ConfigUrl,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub body: BodyConfig,
    /// Connection deadlines and caps; `max_connections` 0 is worked out at start from the
    /// open-file limit ([`connection_cap`]).
    pub connections: Limits,
    pub shutdown_grace: Duration,
    /// Server worker threads, each with its own runtime.
    pub threads: usize,
    pub database_url: ConfigUrl,
    pub settings: Settings,
    pub reaper_interval: Duration,
    pub demo: Option<DemoConfig>,
    /// `None` when no API key is configured: the provider and its models are off.
    pub openai: Option<OpenAiConfig>,
    pub catalog_files: Vec<PathBuf>,
    pub log_level: String,
}

/// Flag values that override every other layer.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

pub fn load(file: Option<&Path>, flags: &Overrides) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Toml::string(DEFAULTS));
    if let Some(path) = file {
        if !path.is_file() {
            bail!("config file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment
        .merge(Env::prefixed("TOLLGATE__").split("__"))
        .merge(
            Env::raw()
                .only(&["OPENAI_API_KEY", "OPENAI_BASE_URL"])
                .map(|k| {
                    let name = k.as_str().to_ascii_lowercase();
                    format!("providers.openai.{}", name.trim_start_matches("openai_")).into()
                }),
        );
    if let Some(listen) = &flags.listen {
        figment = figment.merge(Serialized::default("server.listen", listen));
    }
    if let Some(url) = &flags.database_url {
        figment = figment.merge(Serialized::default("database.url", url));
    }
    let raw: Raw = figment
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    validate(raw)
}

fn seconds(field: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("invalid configuration: `{field}` must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn validate(raw: Raw) -> anyhow::Result<Config> {
    let listen: SocketAddr = raw.server.listen.parse().with_context(|| {
        format!(
            "invalid configuration: `server.listen` = `{}` is not an address like 127.0.0.1:8080",
            raw.server.listen
        )
    })?;
    let url = raw.database.url.trim().to_owned();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres:")
        || url.starts_with("postgresql:"))
    {
        bail!(
            "invalid configuration: `database.url` = `{}` must start with sqlite: or postgres:",
            redact_url(&url)
        );
    }
    let b = &raw.billing;
    if b.credits_per_usd <= 0 {
        bail!("invalid configuration: `billing.credits_per_usd` must be positive");
    }
    if b.verified_grant_credits < 0 || b.low_balance_threshold_credits < 0 {
        bail!("invalid configuration: `billing.verified_grant_credits` and `billing.low_balance_threshold_credits` must not be negative");
    }
    if b.payment_provider != "sandbox" {
        bail!(
            "invalid configuration: `billing.payment_provider` = `{}`: only `sandbox` is available",
            b.payment_provider
        );
    }
    if b.billing_url.trim().is_empty() {
        bail!("invalid configuration: `billing.billing_url` must not be empty");
    }
    if b.hold_lease_seconds == 0 || b.reaper_interval_seconds == 0 {
        bail!("invalid configuration: `billing.hold_lease_seconds` and `billing.reaper_interval_seconds` must be positive");
    }
    let u = &raw.upstream;
    let timeouts = Timeouts {
        connect: seconds(
            "upstream.connect_timeout_seconds",
            u.connect_timeout_seconds,
        )?,
        first_byte: seconds(
            "upstream.first_byte_timeout_seconds",
            u.first_byte_timeout_seconds,
        )?,
        total: seconds("upstream.total_timeout_seconds", u.total_timeout_seconds)?,
    };
    // A live request's lease is renewed three times per lease; a crashed node's holds are
    // released one lease after its last renewal.
    let lease = Duration::from_secs(b.hold_lease_seconds);
    if b.hold_lease_seconds < 3 {
        bail!(
            "invalid configuration: `billing.hold_lease_seconds` must be at least 3, got {}",
            b.hold_lease_seconds
        );
    }
    let sv = &raw.server;
    if sv.body_limit_bytes == 0 || sv.request_memory_limit_bytes == 0 {
        bail!("invalid configuration: `server.body_limit_bytes` and `server.request_memory_limit_bytes` must be positive");
    }
    let connections = Limits {
        first_byte: seconds(
            "server.first_byte_timeout_seconds",
            sv.first_byte_timeout_seconds,
        )?,
        header: seconds("server.header_timeout_seconds", sv.header_timeout_seconds)?,
        max_connections: sv.max_connections,
        max_connections_per_peer: sv.max_connections_per_peer,
    };
    let body = BodyConfig {
        max: usize::try_from(sv.body_limit_bytes).unwrap_or(usize::MAX),
        read_timeout: seconds(
            "server.body_read_timeout_seconds",
            sv.body_read_timeout_seconds,
        )?,
        memory: usize::try_from(sv.request_memory_limit_bytes).unwrap_or(usize::MAX),
    };
    // Empty until `serve` knows its bound port (see `node_id_for`).
    let node_id = raw.node.id.trim().to_owned();
    let openai = (!raw.providers.openai.api_key.trim().is_empty()).then(|| OpenAiConfig {
        api_key: Secret::new(raw.providers.openai.api_key.trim().to_owned()),
        base_url: ConfigUrl::new(raw.providers.openai.base_url.trim()),
    });
    if let Some(o) = &openai {
        let url = o.base_url.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "invalid configuration: `providers.openai.base_url` = `{}` must be an http(s) URL",
                o.base_url
            );
        }
    }
    let demo = raw.providers.demo.enabled.then_some(DemoConfig {
        tokens_per_second: raw.providers.demo.tokens_per_second,
        reply_tokens: raw.providers.demo.reply_tokens.max(1),
    });
    Ok(Config {
        listen,
        body,
        connections,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_seconds),
        threads: match raw.server.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        },
        database_url: ConfigUrl::new(url),
        settings: Settings {
            rate: CreditRate(b.credits_per_usd),
            billing_url: b.billing_url.trim().to_owned(),
            verified_grant: Credits(b.verified_grant_credits),
            low_balance_threshold: Credits(b.low_balance_threshold_credits),
            free_tier: FreeTier {
                hourly_requests: raw.free_tier.hourly_requests,
                max_in_flight: raw.free_tier.max_in_flight.max(1),
                max_output_tokens: raw.free_tier.max_output_tokens.max(1),
            },
            prompt_margin_percent: b.prompt_margin_percent,
            hold_lease: lease,
            node_id,
            upstream_timeouts: timeouts,
        },
        reaper_interval: Duration::from_secs(b.reaper_interval_seconds),
        demo,
        openai,
        catalog_files: raw.catalog.files,
        log_level: raw.log.level,
    })
}

/// The connection cap when none is configured: room for two sockets per connection (a
/// stream holds the client's and the upstream's) within the open-file limit, after 256
/// descriptors for everything else (the database, refused connections being answered).
pub fn connection_cap(open_file_limit: u64) -> usize {
    usize::try_from(open_file_limit.saturating_sub(256) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The configured node id, else `<hostname>:<bound port>`: stable across restarts on the same
/// port, distinct for nodes sharing a host.
pub fn node_id_for(configured: &str, port: u16) -> String {
    if configured.is_empty() {
        format!("{}:{port}", hostname())
    } else {
        configured.to_owned()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path), &Overrides::default())
    }

    #[test]
    fn defaults_are_valid_and_flags_win() {
        let c = load(
            None,
            &Overrides {
                listen: Some("127.0.0.1:9999".into()),
                database_url: Some("sqlite://x.db".into()),
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.database_url.as_str(), "sqlite://x.db");
        assert_eq!(c.settings.verified_grant, Credits(50_000));
        assert_eq!(c.settings.free_tier.max_output_tokens, 512);
    }

    #[test]
    fn unknown_keys_name_the_field() {
        let e = with_file("[server]\ncolour = \"blue\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = with_file("[nonsense]\nx = 1\n").unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_refused() {
        let e = with_file("[free_tier]\nhourly_requests = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hourly_requests"), "{e}");
        let e = with_file("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = with_file("[billing]\nhold_lease_seconds = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hold_lease_seconds"), "{e}");
        let c = with_file("[free_tier]\nhourly_requests = 3\n").unwrap();
        assert_eq!(c.settings.free_tier.hourly_requests, 3);
    }
}
