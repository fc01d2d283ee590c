//! The serving process's live holds, and the balances and key-limit figures they are checked
//! against, kept in memory.
//!
//! SQLite has one serving process (it takes the database's serve lock), so a hold needs no
//! disk write: it lives here until it is settled or released, and a crash or restart releases
//! every hold at once, exactly as SPEC asks of a restarting node. Balances and key spending
//! are cached copies of committed rows; the combiner drops the copies once another
//! connection has committed (it looks at least every millisecond the write path is used),
//! so a check here sees what the database says.

use foldhash::HashMap;

/// Above this many cached accounts or keys, idle entries (no live hold) are dropped.
const CACHE_LIMIT: usize = 65_536;

/// One live hold.
#[derive(Debug, Clone)]
pub(crate) struct LiveHold {
    pub account_id: String,
    pub key_id: String,
    pub key_limited: bool,
    pub node_id: String,
    pub amount: i64,
    pub lease_until: i64,
    /// Set by a settlement whose transaction has not committed yet, to what it charges: the
    /// book's balance already counts that charge, so the hold reserves `amount` minus it, and
    /// the hold stays until the charge is committed. If the commit fails, the balance is read
    /// again and the hold reserves `amount` once more, for the settlement's retry. Either way
    /// the credits available to others never exceed what they were before the settlement.
    pub settling: Option<i64>,
}

impl LiveHold {
    /// What the hold reserves now (less what a settlement in progress already charged).
    fn reserved(&self) -> i64 {
        self.amount - self.settling.unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct AccountEntry {
    /// The committed balance; `None` until read (or after another connection committed).
    balance: Option<i64>,
    /// The committed `accounts.held` (holds stored by an earlier version); `None` until read.
    stored_held: Option<i64>,
    held: i64,
    holds: u32,
}

#[derive(Debug, Default)]
struct KeyEntry {
    /// `(limit_period_start, limit_spent)` as committed; `None` until read.
    spent: Option<(i64, i64)>,
    held: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Book {
    accounts: HashMap<String, AccountEntry>,
    keys: HashMap<String, KeyEntry>,
    holds: HashMap<String, LiveHold>,
}

/// An account's figures in the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountFigures {
    pub held: i64,
    pub holds_sum: i64,
    pub expired: i64,
}

impl Book {
    /// Forgets every cached balance and key figure (another connection committed); live
    /// holds stay.
    pub fn forget_committed(&mut self) {
        for a in self.accounts.values_mut() {
            a.balance = None;
            a.stored_held = None;
        }
        for k in self.keys.values_mut() {
            k.spent = None;
        }
    }

    pub fn balance(&self, account_id: &str) -> Option<i64> {
        self.accounts.get(account_id).and_then(|a| a.balance)
    }

    pub fn set_balance(&mut self, account_id: &str, balance: i64) {
        self.trim();
        self.account_mut(account_id).balance = Some(balance);
    }

    /// The committed `(balance, accounts.held)`, when both are known.
    pub fn committed(&self, account_id: &str) -> Option<(i64, i64)> {
        let a = self.accounts.get(account_id)?;
        Some((a.balance?, a.stored_held?))
    }

    pub fn set_committed(&mut self, account_id: &str, balance: i64, stored_held: i64) {
        self.trim();
        let a = self.account_mut(account_id);
        a.balance = Some(balance);
        a.stored_held = Some(stored_held);
    }

    pub fn held(&self, account_id: &str) -> i64 {
        self.accounts.get(account_id).map_or(0, |a| a.held)
    }

    /// Live holds of the account whose lease has not ended at `now`.
    pub fn in_flight(&self, account_id: &str, now: i64) -> i64 {
        match self.accounts.get(account_id) {
            Some(a) if a.holds > 0 => self
                .holds
                .values()
                .filter(|h| h.account_id == account_id && h.lease_until > now)
                .count() as i64,
            _ => 0,
        }
    }

    pub fn key_spent(&self, key_id: &str) -> Option<(i64, i64)> {
        self.keys.get(key_id).and_then(|k| k.spent)
    }

    pub fn set_key_spent(&mut self, key_id: &str, period_start: i64, spent: i64) {
        self.trim();
        self.key_mut(key_id).spent = Some((period_start, spent));
    }

    pub fn key_held(&self, key_id: &str) -> i64 {
        self.keys.get(key_id).map_or(0, |k| k.held)
    }

    pub fn hold(&self, id: &str) -> Option<&LiveHold> {
        self.holds.get(id)
    }

    /// Whether a hold with this id is live.
    pub fn contains(&self, id: &str) -> bool {
        self.holds.contains_key(id)
    }

    pub fn insert(&mut self, id: String, hold: LiveHold) {
        let account = self.account_mut(&hold.account_id);
        account.held += hold.amount;
        account.holds += 1;
        if hold.key_limited {
            self.key_mut(&hold.key_id).held += hold.amount;
        }
        self.holds.insert(id, hold);
    }

    /// Marks a hold as being settled for `charge`, which the book's balance now counts (see
    /// [`LiveHold::settling`]).
    pub fn begin_settling(&mut self, id: &str, charge: i64) {
        let Some(h) = self.holds.get_mut(id) else {
            return;
        };
        let charge = charge.clamp(0, h.amount);
        h.settling = Some(charge);
        let (account, key, limited) = (h.account_id.clone(), h.key_id.clone(), h.key_limited);
        self.account_mut(&account).held -= charge;
        if limited {
            self.key_mut(&key).held -= charge;
        }
    }

    /// A settlement did not commit: its hold is live again, to be settled by the retry.
    pub fn abort_settling(&mut self, id: &str) {
        let Some(h) = self.holds.get_mut(id) else {
            return;
        };
        let Some(charge) = h.settling.take() else {
            return;
        };
        let (account, key, limited) = (h.account_id.clone(), h.key_id.clone(), h.key_limited);
        self.account_mut(&account).held += charge;
        if limited {
            self.key_mut(&key).held += charge;
        }
    }

    /// Moves the lease of each live hold named in `ids`; returns how many it found.
    pub fn renew(&mut self, ids: &[String], until: i64) -> usize {
        let mut found = 0;
        for id in ids {
            if let Some(h) = self.holds.get_mut(id) {
                h.lease_until = h.lease_until.max(until);
                found += 1;
            }
        }
        found
    }

    /// Removes a hold and gives back what it reserved.
    pub fn remove(&mut self, id: &str) -> Option<LiveHold> {
        let hold = self.holds.remove(id)?;
        let reserved = hold.reserved();
        if let Some(a) = self.accounts.get_mut(&hold.account_id) {
            a.held -= reserved;
            a.holds -= 1;
        }
        if hold.key_limited {
            if let Some(k) = self.keys.get_mut(&hold.key_id) {
                k.held -= reserved;
            }
        }
        Some(hold)
    }

    /// Removes every hold `matches` selects; returns how many.
    pub fn remove_where(&mut self, matches: impl Fn(&LiveHold) -> bool) -> u64 {
        let ids: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, h)| matches(h))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len() as u64
    }

    /// Per account: the held total, the sum of its live holds (counted independently), and
    /// how many of them outlived their lease at `now`.
    pub fn figures(&self, now: i64) -> HashMap<&str, AccountFigures> {
        let mut out: HashMap<&str, AccountFigures> = HashMap::default();
        for (id, a) in &self.accounts {
            if a.held != 0 || a.holds != 0 {
                out.insert(
                    id,
                    AccountFigures {
                        held: a.held,
                        holds_sum: 0,
                        expired: 0,
                    },
                );
            }
        }
        for h in self.holds.values() {
            let f = out.entry(h.account_id.as_str()).or_insert(AccountFigures {
                held: 0,
                holds_sum: 0,
                expired: 0,
            });
            f.holds_sum += h.reserved();
            f.expired += i64::from(h.lease_until < now);
        }
        out
    }

    fn account_mut(&mut self, account_id: &str) -> &mut AccountEntry {
        // Look up first: the entry almost always exists, and the key need not be copied.
        if !self.accounts.contains_key(account_id) {
            self.accounts
                .insert(account_id.to_owned(), AccountEntry::default());
        }
        self.accounts
            .get_mut(account_id)
            .expect("the entry was just ensured")
    }

    fn key_mut(&mut self, key_id: &str) -> &mut KeyEntry {
        if !self.keys.contains_key(key_id) {
            self.keys.insert(key_id.to_owned(), KeyEntry::default());
        }
        self.keys
            .get_mut(key_id)
            .expect("the entry was just ensured")
    }

    /// Keeps the caches bounded: past the limit, entries without live holds go.
    fn trim(&mut self) {
        if self.accounts.len() > CACHE_LIMIT {
            self.accounts.retain(|_, a| a.holds > 0 || a.held != 0);
        }
        if self.keys.len() > CACHE_LIMIT {
            self.keys.retain(|_, k| k.held != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(account: &str, key: &str, limited: bool, amount: i64, lease_until: i64) -> LiveHold {
        LiveHold {
            account_id: account.into(),
            key_id: key.into(),
            key_limited: limited,
            node_id: "n".into(),
            amount,
            lease_until,
            settling: None,
        }
    }

    #[test]
    fn holds_add_up_and_give_back_on_removal() {
        let mut b = Book::default();
        b.set_balance("a", 1_000);
        b.insert("h1".into(), live("a", "k", true, 300, 10));
        b.insert("h2".into(), live("a", "k", false, 200, 20));
        assert_eq!((b.held("a"), b.key_held("k")), (500, 300));
        assert_eq!(b.in_flight("a", 15), 1);
        let f = b.figures(15)["a"];
        assert_eq!((f.held, f.holds_sum, f.expired), (500, 500, 1));
        assert_eq!(b.remove("h1").map(|h| h.amount), Some(300));
        assert!(b.remove("h1").is_none());
        assert_eq!((b.held("a"), b.key_held("k")), (200, 0));
        assert_eq!(b.remove_where(|h| h.node_id == "n"), 1);
        assert_eq!(b.held("a"), 0);
        assert!(!b.figures(0).contains_key("a"));
    }

    #[test]
    fn a_hold_being_settled_reserves_what_its_charge_leaves_until_removed_or_aborted() {
        let mut b = Book::default();
        b.insert("h".into(), live("a", "k", true, 300, 10));
        b.begin_settling("h", 120);
        assert_eq!((b.held("a"), b.key_held("k")), (180, 180));
        let f = b.figures(0)["a"];
        assert_eq!((f.held, f.holds_sum), (180, 180));
        // The commit failed: the hold reserves all of it again.
        b.abort_settling("h");
        assert_eq!((b.held("a"), b.key_held("k")), (300, 300));
        b.begin_settling("h", 120);
        // The commit landed: nothing is left reserved.
        assert!(b.remove("h").is_some());
        assert_eq!((b.held("a"), b.key_held("k")), (0, 0));
    }

    #[test]
    fn leases_are_renewed_for_named_live_holds_only() {
        let mut b = Book::default();
        b.insert("h1".into(), live("a", "k", false, 1, 10));
        b.insert("h2".into(), live("a", "k", false, 1, 10));
        assert_eq!(b.renew(&["h1".into(), "gone".into()], 50), 1);
        assert_eq!(b.hold("h1").map(|h| h.lease_until), Some(50));
        assert_eq!(b.hold("h2").map(|h| h.lease_until), Some(10));
        // A renewal never shortens a lease.
        b.renew(&["h1".into()], 20);
        assert_eq!(b.hold("h1").map(|h| h.lease_until), Some(50));
    }

    #[test]
    fn forgetting_committed_figures_keeps_live_holds() {
        let mut b = Book::default();
        b.set_balance("a", 1_000);
        b.set_key_spent("k", 5, 7);
        b.insert("h".into(), live("a", "k", true, 100, 10));
        b.forget_committed();
        assert_eq!((b.balance("a"), b.key_spent("k")), (None, None));
        assert_eq!((b.held("a"), b.key_held("k")), (100, 100));
        assert!(b.contains("h"));
    }

    #[test]
    fn the_cache_is_bounded_but_never_drops_a_held_account() {
        let mut b = Book::default();
        b.insert("h".into(), live("held", "k", false, 1, 10));
        for i in 0..=CACHE_LIMIT + 1 {
            b.set_balance(&format!("idle{i}"), 1);
        }
        assert!(b.accounts.len() <= CACHE_LIMIT + 1);
        assert_eq!(b.held("held"), 1);
    }
}
