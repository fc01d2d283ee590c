//! The leases of this process's live holds: renewed while their requests run, so the reaper
//! (of this node or any other) only ever releases the holds of a process that is gone.

use super::Relay;
use chrono::Utc;
use foldhash::HashSet;
use std::sync::Mutex;

/// The inference ids of the holds this process placed and has not settled yet.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    live: Mutex<HashSet<String>>,
}

impl Leases {
    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add(&self, id: &str) {
        self.live().insert(id.to_owned());
    }

    pub fn remove(&self, id: &str) {
        self.live().remove(id);
    }

    fn snapshot(&self) -> Vec<String> {
        self.live().iter().cloned().collect()
    }
}

impl Relay {
    /// Renews the leases of this process's live holds, three times per lease, until the
    /// process stops. A renewal that fails is tried again at the next turn, well before the
    /// leases it would have moved end.
    pub async fn keep_leases(self) {
        let lease = self.inner.settings.hold_lease;
        let every = lease / 3;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ids = self.inner.leases.snapshot();
            if ids.is_empty() {
                continue;
            }
            let until = Utc::now() + lease;
            if let Err(e) = self.inner.store.renew_leases(&ids, until).await {
                tracing::error!(error = %e, holds = ids.len(), "renewing the leases of live holds failed");
            }
        }
    }
}
