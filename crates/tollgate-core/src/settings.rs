//! The typed settings the domain runs with (built and validated by the binary's config).

use crate::money::{CreditRate, Credits};
use std::time::Duration;
use tollgate_providers::Timeouts;

/// Limits for accounts in the `free` tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeTier {
    pub hourly_requests: u32,
    pub max_in_flight: u32,
    pub max_output_tokens: u64,
}

impl Default for FreeTier {
    fn default() -> Self {
        Self {
            hourly_requests: 10,
            max_in_flight: 1,
            max_output_tokens: 512,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub rate: CreditRate,
    /// Shown in the `credits_exhausted` and `tier_model_forbidden` messages.
    pub billing_url: String,
    /// The one-time grant for adding a billing method.
    pub verified_grant: Credits,
    pub low_balance_threshold: Credits,
    pub free_tier: FreeTier,
    /// Added to the locally counted prompt when holding (upstream tokenizers differ).
    pub prompt_margin_percent: u32,
    pub hold_lease: Duration,
    /// Identifies this node's holds across restarts.
    pub node_id: String,
    pub upstream_timeouts: Timeouts,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rate: CreditRate::default(),
            billing_url: "http://127.0.0.1:8080/billing".into(),
            verified_grant: Credits(50_000),
            low_balance_threshold: Credits(10_000),
            free_tier: FreeTier::default(),
            prompt_margin_percent: 10,
            hold_lease: Duration::from_secs(900),
            node_id: "local".into(),
            upstream_timeouts: Timeouts {
                connect: Duration::from_secs(10),
                first_byte: Duration::from_secs(120),
                total: Duration::from_secs(600),
            },
        }
    }
}
