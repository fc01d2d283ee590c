//! API keys and their accounts as last read, so authenticating a request reads no database.
//!
//! Every entry carries the epoch it was read in; the store raises the epoch whenever a key
//! or account may have changed (its own writes to them, or any commit by another process),
//! and an entry from an earlier epoch is read again.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tollgate_core::accounts::Account;
use tollgate_core::keys::ApiKey;

/// Most cached keys; past it, the cache starts over.
const LIMIT: usize = 100_000;

type Entry = (u64, Arc<(ApiKey, Account)>);

pub(crate) struct KeyCache {
    epoch: Arc<AtomicU64>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl KeyCache {
    pub fn new(epoch: Arc<AtomicU64>) -> Self {
        Self {
            epoch,
            entries: Mutex::new(HashMap::default()),
        }
    }

    /// The epoch to record with a read that starts now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks every entry stale (a key or account was written).
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    pub fn get(&self, hash: &str) -> Option<(ApiKey, Account)> {
        let now = self.epoch();
        let entries = self.entries.lock().ok()?;
        match entries.get(hash) {
            Some((epoch, found)) if *epoch == now => Some((**found).clone()),
            _ => None,
        }
    }

    /// Keeps what a read begun at `epoch` found.
    pub fn put(&self, hash: &str, epoch: u64, found: (ApiKey, Account)) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= LIMIT {
                entries.clear();
            }
            entries.insert(hash.to_owned(), (epoch, Arc::new(found)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::keys::KeyKind;
    use tollgate_core::money::Credits;

    fn found() -> (ApiKey, Account) {
        let key = ApiKey {
            id: "k".into(),
            account_id: "a".into(),
            prefix: "p".into(),
            name: "n".into(),
            kind: KeyKind::Regular,
            disabled: false,
            scopes: None,
            limit: None,
        };
        let account = Account {
            id: "a".into(),
            email: "a@example.com".into(),
            has_billing_method: false,
            has_paid: false,
            suspended: false,
            balance: Credits(5),
            held: Credits::ZERO,
            created_at: chrono::Utc::now(),
        };
        (key, account)
    }

    #[test]
    fn entries_from_an_earlier_epoch_are_not_served() {
        let cache = KeyCache::new(Arc::new(AtomicU64::new(0)));
        let read_at = cache.epoch();
        cache.put("h", read_at, found());
        assert_eq!(cache.get("h").map(|(k, _)| k.id), Some("k".into()));
        cache.invalidate();
        assert!(cache.get("h").is_none());
        // A read that began before a change is never served after it.
        let read_at = cache.epoch();
        cache.invalidate();
        cache.put("h", read_at, found());
        assert!(cache.get("h").is_none());
    }
}
