//! The storage traits the domain owns; `tollgate-store` implements them for SQLite and PostgreSQL.

use crate::accounts::Account;
use crate::keys::{ApiKey, KeyKind, SpendLimit};
use crate::money::Credits;
use crate::usage::{ChargeCap, UsageRecord};
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
            account_id: s.row.account_id.clone(),
            direction: Direction::Charge,
            kind: EntryType::ModelUsage,
            amount: charge,
            model: Some(s.row.model.clone()),
            reference_id: Some(s.row.inference_id.clone()),
            description: None,
            idempotency_key: format!("usage:{}", s.row.inference_id),
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
    /// The key's spending period the hold counts in (when the key has a limit): the later of
    /// the stored period and the one the request's clock named, so it never moves backwards.
    /// The settlement attributes its charge to this period.
    pub key_period: Option<DateTime<Utc>>,
}

/// The charge for a finished request, applied with the hold's release and the request's log
/// row in one step. Settled once per inference id (the row's key): a retry changes nothing.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// What to charge; the store takes less when the account cannot pay it without taking
    /// credits other holds reserved (and says so in the row's `capped`).
    pub charge: Credits,
    /// The hold's key period ([`Hold::key_period`]); `Some` exactly when the key has a limit.
    pub key_period_start: Option<DateTime<Utc>>,
    /// The request's log row; the store sets its `credits` (and `capped`) to what it charged.
    pub row: UsageRecord,
}

impl Settlement {
    /// The hold's id: the request's inference id.
    pub fn hold_id(&self) -> &str {
        &self.row.inference_id
    }

    pub fn account_id(&self) -> &str {
        &self.row.account_id
    }

    /// The row's `capped` when the store charges `charged`: the balance capped it when that
    /// is less than asked.
    pub fn cap_for(&self, charged: i64) -> Option<ChargeCap> {
        if charged < self.charge.0 {
            Some(ChargeCap::Balance)
        } else {
            self.row.capped
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The hold was released and this much charged (never below zero balance).
    Charged(Credits),
    /// Settled earlier (a retry): this much was charged then.
    AlreadySettled(Credits),
    /// The hold was gone (released by its lease or a restart while the request still ran):
    /// this much was charged from the request's own record, as far as the credits no live
    /// hold reserves allowed. The caller reports it as an error.
    ChargedWithoutHold(Credits),
}

impl Settled {
    /// What the request was charged.
    pub fn credits(self) -> Credits {
        match self {
            Self::Charged(c) | Self::AlreadySettled(c) | Self::ChargedWithoutHold(c) => c,
        }
    }
}

/// A settled request as the ledger check audits it: its log row's units and charge beside
/// the ledger's `MODEL_USAGE` amount for the same inference id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargedRow {
    pub inference_id: String,
    pub model: String,
    pub succeeded: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub credits: Credits,
    pub capped: Option<ChargeCap>,
    /// The `MODEL_USAGE` entry's amount, zero when there is none.
    pub ledger: Credits,
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
    /// Called once by a node before it serves, with its node id: the store makes sure no
    /// other live process serves under that id (SQLite: no other process serves the file at
    /// all) and fails when one does, so that releasing the id's holds at start
    /// ([`Store::release_node_holds`]) can only release holds of a process that is gone.
    async fn claim_serving(&self, node_id: &str) -> Result<(), StoreError>;
    /// Where an operator command must go to see the live holds: `None` when this process can
    /// act on the database itself (it then keeps any serving process out until it is done);
    /// else the serving process's control socket.
    async fn operator_access(&self) -> Result<OperatorAccess, StoreError> {
        Ok(OperatorAccess::Direct)
    }
    /// The socket a serving process listens on for operator commands, where the store keeps
    /// live holds in that process's memory (SQLite); `None` when the database holds them.
    fn control_socket(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Moves the lease of each live hold named in `ids` to `until` (holds of requests still
    /// running are never reaped); ids of settled holds are ignored.
    async fn renew_leases(&self, ids: &[String], until: DateTime<Utc>) -> Result<(), StoreError>;
    /// Releases every hold owned by `node_id` (a restarting node); returns how many.
    async fn release_node_holds(&self, node_id: &str) -> Result<u64, StoreError>;
    /// Releases every hold whose lease ended before `now`; returns how many.
    async fn release_expired_holds(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Every account whose balance differs from its ledger or whose holds disagree or are expired.
    async fn ledger_check(&self, now: DateTime<Utc>) -> Result<Vec<Discrepancy>, StoreError>;

    /// Up to `limit` usage rows ordered by inference id, starting after `after`, each with
    /// the ledger's `MODEL_USAGE` amount for it.
    async fn charged_rows(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ChargedRow>, StoreError>;
    /// Inference ids of `MODEL_USAGE` entries that have no usage row (at most `limit`).
    async fn charges_without_row(&self, limit: u32) -> Result<Vec<String>, StoreError>;
}

/// How an operator command reaches the live holds ([`Store::operator_access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAccess {
    /// Act on the database directly: it holds every live hold, or no process serves it.
    Direct,
    /// A running server keeps the live holds in its memory: send the command to it, at this
    /// socket.
    Server(std::path::PathBuf),
}
