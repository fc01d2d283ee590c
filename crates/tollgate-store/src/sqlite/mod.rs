//! The SQLite store: one file in WAL mode. Writes run on a single writer thread in
//! group-committed transactions; reads run on the caller's thread on read-only connections.

mod checkpoint;
mod migrate;
mod ops;
mod reader;
mod writer;

use crate::rows::{kind, limit, millis, scopes, time};
use chrono::{DateTime, Utc};
use reader::Readers;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::PathBuf;
use tollgate_core::accounts::Account;
use tollgate_core::keys::ApiKey;
use tollgate_core::money::Credits;
use tollgate_core::store::*;
use tollgate_core::usage::UsageRecord;
use writer::{Lane, Writer};

/// Usage-log rows written per background transaction.
const USAGE_CHUNK: usize = 32;

pub struct SqliteStore {
    writer: Writer,
    readers: Readers,
    _checkpointer: checkpoint::Checkpointer,
}

pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains("UNIQUE") {
            return StoreError::Conflict(crate::rows::unique_subject(msg));
        }
    }
    StoreError::Database(e.to_string())
}

/// The file a `sqlite:` URL names (`sqlite://PATH`, `sqlite:PATH`; query options ignored).
fn path_of(url: &str) -> Result<PathBuf, String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("`{url}` is not a sqlite: URL"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err("an in-memory SQLite database cannot be shared by the server's connections; give a file path".into());
    }
    Ok(PathBuf::from(path))
}

const ACCOUNT: &str =
    "a.id, a.email, a.has_billing_method, a.has_paid, a.suspended, a.balance, a.held, a.created_at";

/// Reads the account columns starting at `at`.
fn account_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(at)?,
        email: r.get(at + 1)?,
        has_billing_method: r.get(at + 2)?,
        has_paid: r.get(at + 3)?,
        suspended: r.get(at + 4)?,
        balance: Credits(r.get(at + 5)?),
        held: Credits(r.get(at + 6)?),
        created_at: time(r.get(at + 7)?),
    })
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let path = path_of(url)?;
        let conn =
            Connection::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| e.to_string())?;
        migrate::run(&conn).map_err(|e| format!("migrating {}: {e}", path.display()))?;
        Ok(Self {
            writer: Writer::start(conn),
            _checkpointer: checkpoint::Checkpointer::start(path.clone()),
            readers: Readers::new(path),
        })
    }

    fn account_where(&self, column: &str, value: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT} FROM accounts a WHERE a.{column} = ?1");
        self.readers.read(|c| {
            c.prepare_cached(&sql)?
                .query_row([value], |r| account_at(r, 0))
                .optional()
        })
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.readers
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn create_account(
        &self,
        id: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<Account, StoreError> {
        let (id, email, hash) = (id.to_owned(), email.to_owned(), password_hash.to_owned());
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO accounts (id, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, email, hash, millis(Utc::now())],
                )
                .map_err(db)?;
                c.query_row(&format!("SELECT {ACCOUNT} FROM accounts a WHERE a.id = ?1"), [&id], |r| account_at(r, 0))
                    .map_err(db)
            })
            .await
    }

    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.account_where("id", id)
    }

    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        self.account_where("email", email)
    }

    async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO api_keys (id, account_id, prefix, hash, name, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![key.id, key.account_id, key.prefix, key.hash, key.name, key.kind.as_str(), millis(Utc::now())],
                )
                .map_err(db)?;
                Ok(ApiKey::from(key))
            })
            .await
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<(ApiKey, Account)>, StoreError> {
        let sql = format!(
            "SELECT k.id, k.account_id, k.prefix, k.name, k.kind, k.disabled, k.scopes, k.limit_retention, k.limit_threshold, {ACCOUNT}
             FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.hash = ?1 AND k.deleted_at IS NULL"
        );
        self.readers.read(|c| {
            c.prepare_cached(&sql)?
                .query_row([hash], |r| {
                    let key = ApiKey {
                        id: r.get(0)?,
                        account_id: r.get(1)?,
                        prefix: r.get(2)?,
                        name: r.get(3)?,
                        kind: kind(&r.get::<_, String>(4)?),
                        disabled: r.get(5)?,
                        scopes: scopes(r.get(6)?),
                        limit: limit(r.get(7)?, r.get(8)?),
                    };
                    Ok((key, account_at(r, 9)?))
                })
                .optional()
        })
    }

    async fn add_card(
        &self,
        account_id: &str,
        card: SavedCard,
        grant: Credits,
    ) -> Result<CardOutcome, StoreError> {
        let account_id = account_id.to_owned();
        self.writer
            .write(move |c| ops::add_card(c, &account_id, &card, grant, millis(Utc::now())))
            .await
    }

    async fn write_ledger(&self, entry: LedgerWrite) -> Result<Credits, StoreError> {
        if entry.amount <= Credits::ZERO {
            return Err(StoreError::Database(
                "a ledger amount must be positive".into(),
            ));
        }
        self.writer
            .write(move |c| ops::write_ledger(c, &entry, millis(Utc::now())))
            .await
    }

    async fn hold(&self, req: HoldRequest) -> Result<Hold, HoldError> {
        self.writer.write(move |c| ops::hold(c, &req)).await
    }

    async fn settle(&self, s: Settlement) -> Result<Settled, StoreError> {
        match self
            .writer
            .write(move |c| ops::settle(c, &s, millis(Utc::now())))
            .await
        {
            Err(StoreError::Conflict("idempotency key")) => Ok(Settled::AlreadySettled),
            other => other,
        }
    }

    async fn release_node_holds(&self, node_id: &str) -> Result<u64, StoreError> {
        let node = node_id.to_owned();
        self.writer
            .write(move |c| ops::release_where(c, "h.node_id = ?1", &node))
            .await
    }

    async fn release_expired_holds(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = millis(now);
        self.writer
            .write(move |c| ops::release_where(c, "h.lease_until < ?1", &now))
            .await
    }

    async fn ledger_check(&self, now: DateTime<Utc>) -> Result<Vec<Discrepancy>, StoreError> {
        let rows = self.readers.read(|c| {
            let mut stmt = c.prepare(crate::rows::LEDGER_CHECK_SQL)?;
            let rows = stmt.query_map([millis(now)], |r| {
                Ok(Discrepancy {
                    account_id: r.get(0)?,
                    email: r.get(1)?,
                    balance: Credits(r.get(2)?),
                    held: Credits(r.get(3)?),
                    ledger_sum: Credits(r.get(4)?),
                    holds_sum: Credits(r.get(5)?),
                    expired_holds: r.get(6)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows.into_iter().filter(Discrepancy::disagrees).collect())
    }

    async fn record_usage(&self, rows: &[UsageRecord]) -> Result<(), StoreError> {
        // Small chunks in the background lane: a request waits behind one chunk at most.
        let jobs = rows.chunks(USAGE_CHUNK).map(|chunk| {
            let chunk = chunk.to_vec();
            self.writer
                .write_in(Lane::Background, move |c| ops::record_usage(c, &chunk))
        });
        futures::future::try_join_all(jobs).await.map(drop)
    }
}
