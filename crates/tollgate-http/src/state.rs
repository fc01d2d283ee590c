//! The handles every handler shares: cheap to clone, built only by its constructor.

use std::sync::Arc;
use tollgate_core::relay::Relay;
use tollgate_core::service::Accounts;

#[derive(Clone)]
pub struct AppState {
    pub relay: Relay,
    pub accounts: Accounts,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Models listing, serialised once.
    pub models_json: Arc<bytes::Bytes>,
}

impl AppState {
    pub fn new(relay: Relay, accounts: Accounts, body_limit: usize) -> Self {
        let models_json = Arc::new(crate::routes::v1::models::render(relay.catalog()));
        Self {
            relay,
            accounts,
            body_limit,
            models_json,
        }
    }
}
