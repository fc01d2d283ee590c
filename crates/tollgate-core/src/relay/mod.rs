//! The orchestrator: a request's path from principal to settled, logged reply.
//!
//! `chat` reads like the request path: admit → hold → call upstream → settle → log.

mod chat;
mod routes;
mod stream;
mod ticket;

pub use chat::{ChatReply, ReplyBody};

use crate::catalog::Catalog;
use crate::error::Error;
use crate::keys;
use crate::policy::Principal;
use crate::settings::Settings;
use crate::store::Store;
use crate::usage::UsageWriter;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::task::TaskTracker;
use tollgate_providers::Registry;

/// Request facts from the edge that the logs keep.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub started: Instant,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    pub providers: Registry,
    pub usage: UsageWriter,
    pub settings: Settings,
    /// Settlements in progress; shutdown waits for them.
    pub tasks: TaskTracker,
    /// Responses whose upstream returned more output than allowed.
    pub overages: AtomicU64,
}

/// The request path, cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        providers: Registry,
        usage: UsageWriter,
        settings: Settings,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                catalog,
                providers,
                usage,
                settings,
                tasks,
                overages: AtomicU64::new(0),
            }),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Who holds this bearer key; 401 for a missing, unknown, disabled or deleted key.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, Error> {
        let key = bearer
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(Error::InvalidKey)?;
        if key.len() > 256 {
            return Err(Error::InvalidKey);
        }
        let found = self
            .inner
            .store
            .key_by_hash(&keys::hash(key))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                Error::Internal
            })?;
        match found {
            Some((key, account)) if !key.disabled => Ok(Principal { key, account }),
            _ => Err(Error::InvalidKey),
        }
    }

    /// Responses whose upstream returned more output than was allowed, since start.
    pub fn overage_count(&self) -> u64 {
        self.inner
            .overages
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Loads the tokenizer tables now rather than on the first request.
pub fn warm_up() {
    tollgate_protocol::tokens::warm_up();
}
