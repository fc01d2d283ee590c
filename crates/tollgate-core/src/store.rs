//! The storage traits the domain owns; `tollgate-store` implements them for SQLite and PostgreSQL.

use crate::accounts::Account;
use crate::keys::{ApiKey, KeyKind, SpendLimit};
use crate::money::Credits;
use crate::usage::UsageRecord;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (the name says which).
    #[error("already exists: {0}")]
    Conflict(&'static str),
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The operation would take a balance below zero.
    #[error("insufficient balance")]
    Insufficient,
    #[error("database error: {0}")]
    Database(String),
}

/// Direction of a ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Topup,
    Charge,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topup => "TOPUP",
            Self::Charge => "CHARGE",
        }
    }
}

/// Type of a ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Payment,
    Bonus,
    Refund,
    Adjustment,
    ModelUsage,
    CreditsExpired,
    Init,
}

impl EntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "PAYMENT",
            Self::Bonus => "BONUS",
            Self::Refund => "REFUND",
            Self::Adjustment => "ADJUSTMENT",
            Self::ModelUsage => "MODEL_USAGE",
            Self::CreditsExpired => "CREDITS_EXPIRED",
            Self::Init => "INIT",
        }
    }
}

/// One balance movement to append to the ledger.
#[derive(Debug, Clone)]
pub struct LedgerWrite {
    pub account_id: String,
    pub direction: Direction,
    pub kind: EntryType,
    /// Always positive.
    pub amount: Credits,
    pub model: Option<String>,
    pub reference_id: Option<String>,
    pub description: Option<String>,
    /// A retried write with the same key applies once.
    pub idempotency_key: String,
}

impl LedgerWrite {
    /// The `MODEL_USAGE` charge for a settlement, keyed by its inference id.
    pub fn model_usage(s: &Settlement, charge: Credits) -> Self {
        Self {
            account_id: s.account_id.clone(),
            direction: Direction::Charge,
            kind: EntryType::ModelUsage,
            amount: charge,
            model: Some(s.model.clone()),
            reference_id: Some(s.hold_id.clone()),
            description: None,
            idempotency_key: format!("usage:{}", s.hold_id),
        }
    }

    /// The one-time `BONUS` for an account's first billing method.
    pub fn billing_method_grant(account_id: &str, card: &SavedCard, grant: Credits) -> Self {
        Self {
            account_id: account_id.to_owned(),
            direction: Direction::Topup,
            kind: EntryType::Bonus,
            amount: grant,
            model: None,
            reference_id: Some(card.id.clone()),
            description: Some("Billing method added: one-time grant".into()),
            idempotency_key: format!("billing-method-grant:{account_id}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub account_id: String,
    pub prefix: String,
    pub hash: String,
    pub name: String,
    pub kind: KeyKind,
}

impl From<NewKey> for ApiKey {
    /// A key as it is right after creation: enabled, every scope, no limit.
    fn from(key: NewKey) -> Self {
        Self {
            id: key.id,
            account_id: key.account_id,
            prefix: key.prefix,
            name: key.name,
            kind: key.kind,
            disabled: false,
            scopes: None,
            limit: None,
        }
    }
}

/// A saved payment card, as the payment provider describes it.
#[derive(Debug, Clone)]
pub struct SavedCard {
    pub id: String,
    pub fingerprint: String,
    pub brand: String,
    pub last4: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardOutcome {
    /// Whether the one-time grant was given by this call.
    pub granted: bool,
    pub balance: Credits,
}

/// Free-tier admission rules checked inside the hold transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeTierCheck {
    pub hourly_limit: u32,
    pub max_in_flight: u32,
}

/// A reservation to make atomically: at least `min`, at most `max` credits, against the
/// account's available balance and the key's spending limit.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    /// The inference id.
    pub id: String,
    pub account_id: String,
    pub key_id: String,
    pub node_id: String,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    pub min: Credits,
    pub max: Credits,
    /// The key's limit and the start of its current period.
    pub key_limit: Option<(SpendLimit, DateTime<Utc>)>,
    pub free_tier: Option<FreeTierCheck>,
}

#[derive(Debug, Error)]
pub enum HoldError {
    #[error("available credits {available} do not cover {needed}")]
    Credits { available: Credits, needed: Credits },
    #[error("the key's spending limit is reached")]
    KeyLimit,
    #[error("free-tier hourly limit reached")]
    FreeHourly { retry_after_secs: u64 },
    #[error("free-tier in-flight limit reached")]
    FreeInFlight,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a hold reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: Credits,
}

/// The charge for a finished request, applied with the hold's release in one step.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub hold_id: String,
    pub account_id: String,
    pub charge: Credits,
    pub model: String,
    /// The key's current period start (when it has a limit).
    pub key_period_start: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The hold was released and this much charged (never below zero balance).
    Charged(Credits),
    /// Already settled earlier (idempotent retry).
    AlreadySettled,
    /// No hold: it was released by its lease or a restart; nothing charged.
    HoldGone,
}

/// An account whose books disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub account_id: String,
    pub email: String,
    pub balance: Credits,
    pub ledger_sum: Credits,
    pub held: Credits,
    pub holds_sum: Credits,
    pub expired_holds: i64,
}

impl Discrepancy {
    /// Whether this account's books disagree (the check's verdict for one row).
    pub fn disagrees(&self) -> bool {
        self.balance != self.ledger_sum
            || self.held != self.holds_sum
            || self.expired_holds > 0
            || self.balance < self.held
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_account(
        &self,
        id: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<Account, StoreError>;
    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError>;

    async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError>;
    /// The key with this hash and its account, unless the key is deleted.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<(ApiKey, Account)>, StoreError>;

    /// Saves a card and marks the account as having a billing method; grants `grant` once per
    /// account and once per card fingerprint, as a `BONUS` entry.
    async fn add_card(
        &self,
        account_id: &str,
        card: SavedCard,
        grant: Credits,
    ) -> Result<CardOutcome, StoreError>;

    /// Appends a ledger entry and moves the balance; returns the new balance. A charge that
    /// would take the available balance below zero is refused.
    async fn write_ledger(&self, entry: LedgerWrite) -> Result<Credits, StoreError>;

    async fn hold(&self, req: HoldRequest) -> Result<Hold, HoldError>;
    async fn settle(&self, s: Settlement) -> Result<Settled, StoreError>;

    /// Starts placing a hold now: it is placed (or refused) whether or not the returned
    /// future is polled or dropped. A store whose hold is one job queued at once says so by
    /// overriding this; the default runs [`Store::hold`] in a task of its own.
    fn hold_detached(
        self: Arc<Self>,
        req: HoldRequest,
    ) -> BoxFuture<'static, Result<Hold, HoldError>> {
        let task = tokio::spawn(async move { self.hold(req).await });
        Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                Err(HoldError::Store(StoreError::Database(
                    "the hold task ended early".into(),
                )))
            })
        })
    }

    /// Starts a settlement now: it completes whether or not the returned future is polled
    /// or dropped. The default runs [`Store::settle`] in a task of its own.
    fn settle_detached(
        self: Arc<Self>,
        s: Settlement,
    ) -> BoxFuture<'static, Result<Settled, StoreError>> {
        let task = tokio::spawn(async move { self.settle(s).await });
        Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                Err(StoreError::Database(
                    "the settlement task ended early".into(),
                ))
            })
        })
    }
    /// Called once by a node before it serves: a store that only one process may serve from
    /// (SQLite) takes its lock here and fails when another process holds it.
    async fn claim_serving(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Releases every hold owned by `node_id` (a restarting node); returns how many.
    async fn release_node_holds(&self, node_id: &str) -> Result<u64, StoreError>;
    /// Releases every hold whose lease ended before `now`; returns how many.
    async fn release_expired_holds(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Every account whose balance differs from its ledger or whose holds disagree or are expired.
    async fn ledger_check(&self, now: DateTime<Utc>) -> Result<Vec<Discrepancy>, StoreError>;

    async fn record_usage(&self, rows: &[UsageRecord]) -> Result<(), StoreError>;
}
