//! The handles every handler shares: cheap to clone, built only by its constructor.

use crate::extract::body::BodyLimits;
use crate::extract::memory::MemoryBudget;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::relay::Relay;
use tollgate_core::service::Accounts;

#[derive(Clone)]
pub struct AppState {
    pub relay: Relay,
    pub accounts: Accounts,
    /// How request bodies are read.
    pub body: BodyLimits,
    /// Models listing, serialised once.
    pub models_json: Arc<bytes::Bytes>,
}

/// How request bodies are read: at most `max` bytes, no wait longer than `read_timeout` for
/// the next piece, and large bodies together within `memory` bytes (see `extract::memory`).
#[derive(Debug, Clone, Copy)]
pub struct BodyConfig {
    pub max: usize,
    pub read_timeout: Duration,
    pub memory: usize,
}

impl AppState {
    pub fn new(relay: Relay, accounts: Accounts, body: BodyConfig) -> Self {
        let models_json = Arc::new(crate::routes::v1::models::render(relay.catalog()));
        let memory = MemoryBudget::new(body.memory, relay.metrics().clone());
        Self {
            body: BodyLimits {
                max: body.max,
                read_timeout: body.read_timeout,
                memory,
            },
            relay,
            accounts,
            models_json,
        }
    }
}
