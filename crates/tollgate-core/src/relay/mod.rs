//! The orchestrator: a request's path from principal to settled, logged reply.
//!
//! `chat` reads like the request path: admit → hold → call upstream → settle → log.

mod chat;
mod deadline;
mod hold;
mod leases;
mod routes;
mod settling;
mod stream;
mod ticket;

pub use chat::{ChatReply, ReplyBody};

use crate::catalog::Catalog;
use crate::error::Error;
use crate::keys;
use crate::metrics::Metrics;
use crate::policy::Principal;
use crate::settings::Settings;
use crate::store::Store;
use crate::throttle::LogThrottle;
use leases::Leases;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub settings: Settings,
    /// Settlements in progress; shutdown waits for them.
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// Replies whose upstream returned more output than allowed, logged once a minute per
    /// model and provider.
    pub overage_log: LogThrottle,
    /// This process's live holds, whose leases it renews.
    pub leases: Leases,
    /// Set once shutdown's grace period is over and open requests are being cut.
    pub cutting: AtomicBool,
}

impl Inner {
    /// Why a request that ends without finishing ended: the server cut it at shutdown, or
    /// (otherwise) its client went away.
    pub fn cut_code(&self) -> &'static str {
        if self.cutting.load(Ordering::Relaxed) {
            "server_shutdown"
        } else {
            "client_closed"
        }
    }
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
        settings: Settings,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                catalog,
                providers,
                settings,
                tasks,
                metrics,
                overage_log: LogThrottle::default(),
                leases: Leases::default(),
                cutting: AtomicBool::new(false),
            }),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Marks the requests still open as cut by the server (shutdown's grace period is over):
    /// their usage rows say `server_shutdown`, not `client_closed`.
    pub fn begin_cut(&self) {
        self.inner.cutting.store(true, Ordering::Relaxed);
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
            Some((key, _)) if key.disabled => Err(Error::InvalidKey),
            Some((_, account)) if account.suspended => Err(Error::AccountSuspended),
            Some((key, account)) => Ok(Principal { key, account }),
            None => Err(Error::InvalidKey),
        }
    }
}

/// Loads the tokenizer tables now rather than on the first request.
pub fn warm_up() {
    tollgate_protocol::tokens::warm_up();
}
