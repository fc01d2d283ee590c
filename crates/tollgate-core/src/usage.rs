//! Usage log rows: one per request that held credits, written by its settlement in the same
//! transaction as its charge, so the logs and the ledger cannot disagree after a crash.

use crate::money::Credits;
use chrono::{DateTime, Utc};

/// Outcome of a request as the logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStatus {
    Succeeded,
    Failed,
}

impl UsageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// Why a charge is below the price of the units the row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeCap {
    /// The cost was above the hold and the upstream did not report more output than it was
    /// allowed (a prompt longer than the local count, or a local estimate): the hold was
    /// charged.
    Hold,
    /// The account could not pay more without taking credits that other holds reserved.
    Balance,
}

impl ChargeCap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Balance => "balance",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hold" => Some(Self::Hold),
            "balance" => Some(Self::Balance),
            _ => None,
        }
    }
}

/// One request's log row.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub inference_id: String,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub account_id: String,
    pub key_id: String,
    pub model: String,
    /// The provider that served the request (the last one tried when none answered).
    pub provider: Option<String>,
    pub status: UsageStatus,
    pub origin: &'static str,
    pub error_code: Option<&'static str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// What was charged: set by the settlement that writes the row.
    pub credits: Credits,
    /// Set when `credits` is less than the units' price.
    pub capped: Option<ChargeCap>,
    pub stream: bool,
    pub duration_ms: u64,
    pub ttft_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
}
