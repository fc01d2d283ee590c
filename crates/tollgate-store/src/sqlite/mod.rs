//! The SQLite store: one file in WAL mode, served by one process. Writes and live holds go
//! through the combiner (group commit, no writer thread); reads run on the caller's thread
//! on read-only connections; keys are served from a cache that outside commits invalidate.

mod book;
mod checkpoint;
mod combiner;
mod keycache;
mod migrate;
mod ops;
mod reader;
mod usage_rows;
mod walvfs;

use crate::rows::{kind, limit, millis, scopes, time};
use chrono::{DateTime, Utc};
use combiner::{Combiner, Lane};
use futures::future::BoxFuture;
use keycache::KeyCache;
use reader::Readers;
use rusqlite::{params, OpenFlags, OptionalExtension, Row};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_core::accounts::Account;
use tollgate_core::keys::ApiKey;
use tollgate_core::money::Credits;
use tollgate_core::store::*;
use tollgate_core::usage::ChargeCap;

/// How often an idle store looks for commits made by other processes (the operator CLI);
/// every write batch and every key lookup that finds the write path idle looks too.
const OUTSIDE_COMMIT_CHECK: Duration = Duration::from_millis(250);

/// How long `serve` waits for the serve lock before it says another process serves.
const CLAIM_PATIENCE: Duration = Duration::from_secs(3);

pub struct SqliteStore {
    path: PathBuf,
    writer: Combiner,
    readers: Readers,
    keys: KeyCache,
    /// Held by the serving process once it claims the database.
    serve_lock: Mutex<Option<std::fs::File>>,
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
        let conn = walvfs::open(&path, OpenFlags::default())
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        // No checkpoint on commit: a commit that crossed the WAL's size threshold would copy
        // and fsync pages on a request's path; the checkpoint thread does that instead.
        // A new database gets 1 KiB pages. A settlement commits the same four pages (the
        // account row, the right edges of the ledger's B-trees) at any page size, so the bytes
        // written to the WAL, and later to disk, grow with the page size: 4 KiB pages wrote
        // 32 MB/s at 2,000 req/s against 10 MB/s, and commits that overlap the disk writeback
        // stall for milliseconds (p99 1.4–1.7 ms against 0.8–0.9 ms at that rate). Saturation
        // throughput measured the same. The page size is fixed when the first table is created.
        // Statement journals (savepoints, multi-row statements) stay in memory instead of
        // spilling to temporary files. The WAL is emptied after a quiet spell (see
        // `checkpoint.rs`), not each time it starts over.
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 268435456; PRAGMA temp_store = MEMORY;",
        )
        .map_err(|e| e.to_string())?;
        migrate::run(&conn).map_err(|e| format!("migrating {}: {e}", path.display()))?;
        let epoch = Arc::new(AtomicU64::new(0));
        let writer = Combiner::new(conn, epoch.clone());
        writer.watch_outside_commits(OUTSIDE_COMMIT_CHECK);
        Ok(Self {
            _checkpointer: checkpoint::Checkpointer::start(path.clone(), writer.clone()),
            readers: Readers::new(path.clone()),
            keys: KeyCache::new(epoch),
            serve_lock: Mutex::new(None),
            writer,
            path,
        })
    }

    /// The account as committed, with what the live holds reserve added to `held`.
    async fn account_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Account>, StoreError> {
        let value = value.to_owned();
        self.writer
            .run(move |b| {
                let sql = format!("SELECT {ACCOUNT} FROM accounts a WHERE a.{column} = ?1");
                let found = b
                    .conn()
                    .prepare_cached(&sql)
                    .and_then(|mut s| s.query_row([&value], |r| account_at(r, 0)).optional())
                    .map_err(db)?;
                Ok::<_, StoreError>(found.map(|mut a| {
                    a.held = a.held.saturating_add(Credits(b.book().held(&a.id)));
                    a
                }))
            })
            .await
    }

    /// A paid hold whose figures are cached is placed at once from the book, without the
    /// write path (which may be committing); any other is one job.
    fn hold_detached_ref(&self, req: HoldRequest) -> BoxFuture<'static, Result<Hold, HoldError>> {
        if let Some(placed) = self
            .writer
            .with_book(|book| ops::hold_from_cache(book, &req))
        {
            return Box::pin(std::future::ready(placed));
        }
        Box::pin(
            self.writer
                .submit(Lane::Request, move |b| ops::hold(b, &req)),
        )
    }

    /// Queues a settlement at once (it runs even if the future is dropped).
    fn settle_detached_ref(
        &self,
        s: Settlement,
    ) -> impl std::future::Future<Output = Result<Settled, StoreError>> + Send + 'static {
        self.writer
            .submit(Lane::Commit, move |b| ops::settle(b, s, millis(Utc::now())))
    }

    /// Takes the database's serve lock: one process serves from a SQLite file, because live
    /// holds are kept in that process. `Ok(false)` when another process holds it.
    fn try_claim(&self) -> Result<bool, StoreError> {
        let mut lock = self
            .serve_lock
            .lock()
            .map_err(|_| StoreError::Database("serve lock poisoned".into()))?;
        if lock.is_some() {
            return Ok(true);
        }
        let name = self.sibling(".serve-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", name.display())))?;
        match file.try_lock() {
            Ok(()) => {
                *lock = Some(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Database(format!(
                "cannot lock {}: {e}",
                name.display()
            ))),
        }
    }

    /// The database's path with `suffix` appended.
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
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
            .run(move |b| b.write(|c| {
                c.execute(
                    "INSERT INTO accounts (id, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, email, hash, millis(Utc::now())],
                )
                .map_err(db)?;
                c.query_row(&format!("SELECT {ACCOUNT} FROM accounts a WHERE a.id = ?1"), [&id], |r| account_at(r, 0))
                    .map_err(db)
            }))
            .await
    }

    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.account_where("id", id).await
    }

    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        self.account_where("email", email).await
    }

    async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        self.writer
            .run(move |b| b.write(|c| {
                c.execute(
                    "INSERT INTO api_keys (id, account_id, prefix, hash, name, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![key.id, key.account_id, key.prefix, key.hash, key.name, key.kind.as_str(), millis(Utc::now())],
                )
                .map_err(db)?;
                Ok(ApiKey::from(key))
            }))
            .await
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<(ApiKey, Account)>, StoreError> {
        // A card added or a key disabled by an operator command a moment ago must count.
        self.writer.refresh_epoch();
        if let Some(found) = self.keys.get(hash) {
            return Ok(Some(found));
        }
        let epoch = self.keys.epoch();
        let sql = format!(
            "SELECT k.id, k.account_id, k.prefix, k.name, k.kind, k.disabled, k.scopes, k.limit_retention, k.limit_threshold, {ACCOUNT}
             FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.hash = ?1 AND k.deleted_at IS NULL"
        );
        let found = self.readers.read(|c| {
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
        })?;
        if let Some(found) = &found {
            self.keys.put(hash, epoch, found.clone());
        }
        Ok(found)
    }

    async fn add_card(
        &self,
        account_id: &str,
        card: SavedCard,
        grant: Credits,
    ) -> Result<CardOutcome, StoreError> {
        let account_id = account_id.to_owned();
        let outcome = self
            .writer
            .run(move |b| {
                let outcome =
                    b.write(|c| ops::add_card(c, &account_id, &card, grant, millis(Utc::now())))?;
                b.book().set_balance(&account_id, outcome.balance.0);
                Ok::<_, StoreError>(outcome)
            })
            .await;
        // The account now has a billing method: cached keys must see it.
        self.keys.invalidate();
        outcome
    }

    async fn write_ledger(&self, entry: LedgerWrite) -> Result<Credits, StoreError> {
        if entry.amount <= Credits::ZERO {
            return Err(StoreError::Database(
                "a ledger amount must be positive".into(),
            ));
        }
        self.writer
            .run(move |b| ops::write_ledger(b, &entry, millis(Utc::now())))
            .await
    }

    async fn hold(&self, req: HoldRequest) -> Result<Hold, HoldError> {
        self.hold_detached_ref(req).await
    }

    async fn settle(&self, s: Settlement) -> Result<Settled, StoreError> {
        self.settle_detached_ref(s).await
    }

    /// The hold is placed, or queued as one job, before this returns: no task is needed to
    /// protect it.
    fn hold_detached(
        self: Arc<Self>,
        req: HoldRequest,
    ) -> BoxFuture<'static, Result<Hold, HoldError>> {
        self.hold_detached_ref(req)
    }

    fn settle_detached(
        self: Arc<Self>,
        s: Settlement,
    ) -> BoxFuture<'static, Result<Settled, StoreError>> {
        Box::pin(self.settle_detached_ref(s))
    }

    async fn claim_serving(&self, _node_id: &str) -> Result<(), StoreError> {
        // An operator command acting on the file directly holds the lock for a moment.
        let deadline = std::time::Instant::now() + CLAIM_PATIENCE;
        while std::time::Instant::now() < deadline {
            if self.try_claim()? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(StoreError::Database(format!(
            "another tollgate process is already serving from {}: a SQLite database is served by one process (run several nodes on PostgreSQL)",
            self.path.display()
        )))
    }

    /// Direct while no other process serves the file (and then this one keeps servers out
    /// until it is dropped); else the serving process's control socket.
    async fn operator_access(&self) -> Result<OperatorAccess, StoreError> {
        if self.try_claim()? {
            return Ok(OperatorAccess::Direct);
        }
        Ok(OperatorAccess::Server(self.sibling(".control")))
    }

    fn control_socket(&self) -> Option<PathBuf> {
        Some(self.sibling(".control"))
    }

    async fn renew_leases(&self, ids: &[String], until: DateTime<Utc>) -> Result<(), StoreError> {
        let until = millis(until);
        self.writer.with_book(|book| book.renew(ids, until));
        Ok(())
    }

    async fn release_node_holds(&self, node_id: &str) -> Result<u64, StoreError> {
        let node = node_id.to_owned();
        self.writer
            .run(move |b| {
                let stored = b.write(|c| ops::release_where(c, "h.node_id = ?1", &node))?;
                let mut book = b.book();
                if stored > 0 {
                    // `accounts.held` moved: read the committed figures again.
                    book.forget_committed();
                }
                Ok::<_, StoreError>(stored + book.remove_where(|h| h.node_id == node))
            })
            .await
    }

    async fn release_expired_holds(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = millis(now);
        self.writer
            .run(move |b| {
                let stored = b.write(|c| ops::release_where(c, "h.lease_until < ?1", &now))?;
                let mut book = b.book();
                if stored > 0 {
                    // `accounts.held` moved: read the committed figures again.
                    book.forget_committed();
                }
                // A hold being settled is given back by its settlement's commit.
                let expired = |h: &book::LiveHold| h.lease_until < now && h.settling.is_none();
                Ok::<_, StoreError>(stored + book.remove_where(expired))
            })
            .await
    }

    async fn ledger_check(&self, now: DateTime<Utc>) -> Result<Vec<Discrepancy>, StoreError> {
        // The books from one snapshot, without holding up writes; live holds from the book.
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
        let live = self
            .writer
            .run(move |b| {
                let book = b.book();
                let figures = book.figures(millis(now));
                Ok::<_, StoreError>(
                    figures
                        .into_iter()
                        .map(|(id, f)| (id.to_owned(), f))
                        .collect::<std::collections::HashMap<_, _>>(),
                )
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut d| {
                if let Some(f) = live.get(&d.account_id) {
                    d.held = d.held.saturating_add(Credits(f.held));
                    d.holds_sum = d.holds_sum.saturating_add(Credits(f.holds_sum));
                    d.expired_holds += f.expired;
                }
                d
            })
            .filter(Discrepancy::disagrees)
            .collect())
    }

    async fn charged_rows(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ChargedRow>, StoreError> {
        let after = after.unwrap_or_default();
        self.readers.read(|c| {
            let mut stmt = c.prepare_cached(crate::rows::CHARGED_ROWS_SQL)?;
            let rows = stmt.query_map(params![after, limit], |r| {
                let int = |i: usize| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                Ok(ChargedRow {
                    inference_id: r.get(0)?,
                    model: r.get(1)?,
                    succeeded: r.get::<_, String>(2)? == "succeeded",
                    prompt_tokens: int(3)?,
                    completion_tokens: int(4)?,
                    cached_tokens: int(5)?,
                    credits: Credits(r.get(6)?),
                    capped: r
                        .get::<_, Option<String>>(7)?
                        .as_deref()
                        .and_then(ChargeCap::parse),
                    ledger: Credits(r.get(8)?),
                })
            })?;
            rows.collect()
        })
    }

    async fn charges_without_row(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        self.readers.read(|c| {
            let mut stmt = c.prepare_cached(crate::rows::CHARGES_WITHOUT_ROW_SQL)?;
            let rows = stmt.query_map([limit], |r| r.get(0))?;
            rows.collect()
        })
    }
}
