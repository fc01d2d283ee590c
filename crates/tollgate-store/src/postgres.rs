//! The PostgreSQL store, shared by any number of tollgate nodes; rows touched by money
//! movements are locked with `FOR UPDATE` inside short transactions.

mod node_claim;
mod usage;

use usage::insert_usage;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

pub struct PgStore {
    pub(crate) write: PgPool,
    pub(crate) read: PgPool,
    claim: node_claim::NodeClaim,
}

impl PgStore {
    /// Connects to `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            write: pool.clone(),
            read: pool,
            claim: node_claim::NodeClaim::new(options),
        })
    }
}

use crate::reserve::{self, KeyRoom, HOUR_MS};
use crate::rows::{kind, limit, millis, scopes, time, unique_subject, LEDGER_CHECK_SQL};
use chrono::{DateTime, Utc};
use sqlx::Row;
use tollgate_core::accounts::Account;
use tollgate_core::keys::ApiKey;
use tollgate_core::money::Credits;
use tollgate_core::store::*;

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

fn db(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(unique_subject(d.message()))
        }
        _ => StoreError::Database(e.to_string()),
    }
}

const ACCOUNT_COLUMNS: &str =
    "a.id AS a_id, a.email, a.has_billing_method, a.has_paid, a.suspended, a.balance, a.held AS a_held, a.created_at AS a_created";

fn account_row(r: &<sqlx::Postgres as sqlx::Database>::Row) -> Result<Account, sqlx::Error> {
    Ok(Account {
        id: r.try_get("a_id")?,
        email: r.try_get("email")?,
        has_billing_method: r.try_get("has_billing_method")?,
        has_paid: r.try_get("has_paid")?,
        suspended: r.try_get("suspended")?,
        balance: Credits(r.try_get("balance")?),
        held: Credits(r.try_get("a_held")?),
        created_at: time(r.try_get("a_created")?),
    })
}

fn key_row(r: &<sqlx::Postgres as sqlx::Database>::Row) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        prefix: r.try_get("prefix")?,
        name: r.try_get("name")?,
        kind: kind(&r.try_get::<String, _>("kind")?),
        disabled: r.try_get("disabled")?,
        scopes: scopes(r.try_get("scopes")?),
        limit: limit(r.try_get("limit_retention")?, r.try_get("limit_threshold")?),
    })
}

impl PgStore {
    async fn begin(&self) -> Result<Tx, StoreError> {
        self.write.begin_with("BEGIN").await.map_err(db)
    }

    async fn account_where(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.{column} = $1");
        let row = sqlx::query(&sql)
            .bind(value)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?;
        row.as_ref().map(account_row).transpose().map_err(db)
    }
}

/// Appends a ledger entry and moves the balance inside `tx`. Returns `None` when the
/// idempotency key was already used (nothing applied).
async fn append(tx: &mut Tx, e: &LedgerWrite, now: i64) -> Result<Option<Credits>, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO ledger (account_id, direction, type, amount, model, reference_id, description, idempotency_key, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&e.account_id)
    .bind(e.direction.as_str())
    .bind(e.kind.as_str())
    .bind(e.amount.0)
    .bind(&e.model)
    .bind(&e.reference_id)
    .bind(&e.description)
    .bind(&e.idempotency_key)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    let delta = match e.direction {
        Direction::Topup => e.amount.0,
        Direction::Charge => -e.amount.0,
    };
    let balance: i64 = sqlx::query_scalar(
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance",
    )
    .bind(delta)
    .bind(&e.account_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?
    .ok_or(StoreError::NotFound("account"))?;
    Ok(Some(Credits(balance)))
}

/// Releases the holds matching `filter` (a condition on `h`, with `$1` bound to `arg`).
async fn release_where(
    tx: &mut Tx,
    filter: &str,
    arg: &(dyn AnyArg + Sync),
) -> Result<u64, StoreError> {
    // Lock the holds first, as `settle` does before it locks the account: without this, a
    // concurrent settle of the same hold deadlocks with us, or our sums below see a hold
    // that settle has already given back (PostgreSQL, READ COMMITTED).
    let lock = format!("SELECT h.id FROM holds h WHERE {filter} ORDER BY h.id FOR UPDATE");
    arg.bind_exec(&lock, tx).await?;
    let accounts = format!(
        "UPDATE accounts SET held = held - (SELECT COALESCE(SUM(h.amount), 0) FROM holds h WHERE h.account_id = accounts.id AND {filter})
         WHERE id IN (SELECT h.account_id FROM holds h WHERE {filter})"
    );
    arg.bind_exec(&accounts, tx).await?;
    let keys = format!(
        "UPDATE api_keys SET held = held - (SELECT COALESCE(SUM(h.amount), 0) FROM holds h WHERE h.key_id = api_keys.id AND h.key_limited AND {filter})
         WHERE id IN (SELECT h.key_id FROM holds h WHERE h.key_limited AND {filter})"
    );
    arg.bind_exec(&keys, tx).await?;
    let delete = format!("DELETE FROM holds WHERE id IN (SELECT h.id FROM holds h WHERE {filter})");
    arg.bind_exec(&delete, tx).await
}

/// A single bind argument of either type, so `release_where` serves both filters.
#[async_trait::async_trait]
trait AnyArg {
    async fn bind_exec(&self, sql: &str, tx: &mut Tx) -> Result<u64, StoreError>;
}

#[async_trait::async_trait]
impl AnyArg for i64 {
    async fn bind_exec(&self, sql: &str, tx: &mut Tx) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql)
            .bind(*self)
            .execute(&mut **tx)
            .await
            .map_err(db)?
            .rows_affected())
    }
}

#[async_trait::async_trait]
impl AnyArg for String {
    async fn bind_exec(&self, sql: &str, tx: &mut Tx) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql)
            .bind(self.as_str())
            .execute(&mut **tx)
            .await
            .map_err(db)?
            .rows_affected())
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn create_account(
        &self,
        id: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<Account, StoreError> {
        let now = Utc::now();
        sqlx::query(
            "INSERT INTO accounts (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(email)
        .bind(password_hash)
        .bind(millis(now))
        .execute(&self.write)
        .await
        .map_err(db)?;
        self.account_where("id", id)
            .await?
            .ok_or(StoreError::NotFound("account"))
    }

    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.account_where("id", id).await
    }

    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        self.account_where("email", email).await
    }

    async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, prefix, hash, name, kind, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.account_id)
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(&key.name)
        .bind(key.kind.as_str())
        .bind(millis(Utc::now()))
        .execute(&self.write)
        .await
        .map_err(db)?;
        Ok(ApiKey::from(key))
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<(ApiKey, Account)>, StoreError> {
        let sql = format!(
            "SELECT k.id, k.account_id, k.prefix, k.name, k.kind, k.disabled, k.scopes, k.limit_retention, k.limit_threshold, {ACCOUNT_COLUMNS}
             FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.hash = $1 AND k.deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((
                key_row(&r).map_err(db)?,
                account_row(&r).map_err(db)?,
            ))),
        }
    }

    async fn add_card(
        &self,
        account_id: &str,
        card: SavedCard,
        grant: Credits,
    ) -> Result<CardOutcome, StoreError> {
        let now = millis(Utc::now());
        let mut tx = self.begin().await?;
        let granted_before: Option<bool> =
            sqlx::query_scalar("SELECT bonus_granted FROM accounts WHERE id = $1 FOR UPDATE")
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let granted_before = granted_before.ok_or(StoreError::NotFound("account"))?;
        sqlx::query(
            "INSERT INTO cards (id, account_id, fingerprint, brand, last4, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&card.id)
        .bind(account_id)
        .bind(&card.fingerprint)
        .bind(&card.brand)
        .bind(&card.last4)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("UPDATE accounts SET has_billing_method = TRUE WHERE id = $1")
            .bind(account_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let mut granted = false;
        if !granted_before && grant > Credits::ZERO {
            let fresh_card = sqlx::query(
                "INSERT INTO card_grants (fingerprint, account_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(&card.fingerprint)
            .bind(account_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected()
                == 1;
            if fresh_card {
                let entry = LedgerWrite::billing_method_grant(account_id, &card, grant);
                granted = append(&mut tx, &entry, now).await?.is_some();
                sqlx::query("UPDATE accounts SET bonus_granted = TRUE WHERE id = $1")
                    .bind(account_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(CardOutcome {
            granted,
            balance: Credits(balance),
        })
    }

    async fn write_ledger(&self, entry: LedgerWrite) -> Result<Credits, StoreError> {
        if entry.amount <= Credits::ZERO {
            return Err(StoreError::Database(
                "a ledger amount must be positive".into(),
            ));
        }
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT balance, held FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(&entry.account_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("account"))?;
        let (balance, held): (i64, i64) = (
            row.try_get("balance").map_err(db)?,
            row.try_get("held").map_err(db)?,
        );
        if entry.direction == Direction::Charge && balance - held < entry.amount.0 {
            // A retry of a charge that already applied reports success, not a shortfall.
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT id FROM ledger WHERE idempotency_key = $1")
                    .bind(&entry.idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            return if applied.is_some() {
                Ok(Credits(balance))
            } else {
                Err(StoreError::Insufficient)
            };
        }
        let out = append(&mut tx, &entry, millis(Utc::now())).await?;
        tx.commit().await.map_err(db)?;
        Ok(out.unwrap_or(Credits(balance)))
    }

    async fn hold(&self, req: HoldRequest) -> Result<Hold, HoldError> {
        let now = millis(req.now);
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT balance, held FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(&req.account_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("account"))?;
        let balance: i64 = row.try_get("balance").map_err(db)?;
        let held: i64 = row.try_get("held").map_err(db)?;
        if let Some(free) = req.free_tier {
            let in_flight: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM holds WHERE account_id = $1 AND lease_until > $2",
            )
            .bind(&req.account_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            let window = now - HOUR_MS;
            let row = sqlx::query("SELECT COUNT(*) AS n, MIN(at) AS oldest FROM free_requests WHERE account_id = $1 AND at > $2")
                .bind(&req.account_id)
                .bind(window)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
            let recent: i64 = row.try_get("n").map_err(db)?;
            let oldest: Option<i64> = row.try_get("oldest").map_err(db)?;
            reserve::free_tier(free, in_flight, recent, oldest, now)?;
            sqlx::query("DELETE FROM free_requests WHERE account_id = $1 AND at <= $2")
                .bind(&req.account_id)
                .bind(window)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("INSERT INTO free_requests (account_id, at) VALUES ($1, $2)")
                .bind(&req.account_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let (key, key_period) = match req.key_limit {
            None => (None, None),
            Some((limit, start)) => {
                let row = sqlx::query("SELECT limit_period_start, limit_spent, held FROM api_keys WHERE id = $1 FOR UPDATE")
                    .bind(&req.key_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                let (period, spent) = reserve::key_period(
                    row.try_get("limit_period_start").map_err(db)?,
                    row.try_get("limit_spent").map_err(db)?,
                    millis(start),
                );
                let room = KeyRoom {
                    threshold: limit.threshold.0,
                    spent,
                    held: row.try_get::<i64, _>("held").map_err(db)?,
                };
                (Some(room), Some((period, spent)))
            }
        };
        let reserve = reserve::amount(balance, held, key, req.min, req.max)?;
        if let Some((period, spent)) = key_period {
            sqlx::query(
                "UPDATE api_keys SET held = held + $1, limit_spent = $2, limit_period_start = $3 WHERE id = $4",
            )
            .bind(reserve)
            .bind(spent)
            .bind(period)
            .bind(&req.key_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        if reserve > 0 {
            sqlx::query("UPDATE accounts SET held = held + $1 WHERE id = $2")
                .bind(reserve)
                .bind(&req.account_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        sqlx::query(
            "INSERT INTO holds (id, account_id, key_id, key_limited, node_id, amount, created_at, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&req.id)
        .bind(&req.account_id)
        .bind(&req.key_id)
        .bind(req.key_limit.is_some())
        .bind(&req.node_id)
        .bind(reserve)
        .bind(now)
        .bind(millis(req.lease_until))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Hold {
            amount: Credits(reserve),
            key_period: key_period.map(|(period, _)| time(period)),
        })
    }

    async fn settle(&self, s: Settlement) -> Result<Settled, StoreError> {
        let now = millis(Utc::now());
        let mut tx = self.begin().await?;
        let hold =
            sqlx::query("DELETE FROM holds WHERE id = $1 RETURNING key_id, key_limited, amount")
                .bind(s.hold_id())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let (amount, limited_key) = match &hold {
            Some(hold) => {
                let key_id: String = hold.try_get("key_id").map_err(db)?;
                let limited: bool = hold.try_get("key_limited").map_err(db)?;
                let amount: i64 = hold.try_get("amount").map_err(db)?;
                (amount, limited.then_some(key_id))
            }
            None => {
                // Settled before (a retry whose first try committed), or the hold is gone.
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT credits FROM usage_logs WHERE inference_id = $1")
                        .bind(s.hold_id())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                if let Some(charged) = done {
                    tx.rollback().await.map_err(db)?;
                    return Ok(Settled::AlreadySettled(Credits(charged)));
                }
                (0, s.key_period_start.map(|_| s.row.key_id.clone()))
            }
        };
        let row = sqlx::query("SELECT balance, held FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(s.account_id())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("account"))?;
        let balance: i64 = row.try_get("balance").map_err(db)?;
        let held: i64 = row.try_get("held").map_err(db)?;
        let charge = reserve::charge(s.charge, balance, held, amount);
        if amount > 0 {
            sqlx::query("UPDATE accounts SET held = held - $1 WHERE id = $2")
                .bind(amount)
                .bind(s.account_id())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        if let Some(key_id) = &limited_key {
            let key = sqlx::query(
                "SELECT limit_period_start, limit_spent FROM api_keys WHERE id = $1 FOR UPDATE",
            )
            .bind(key_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            let (period, spent) = reserve::key_spend_after(
                key.try_get("limit_period_start").map_err(db)?,
                key.try_get("limit_spent").map_err(db)?,
                s.key_period_start.map_or(0, millis),
                charge,
            );
            sqlx::query(
                "UPDATE api_keys SET held = held - $1, limit_spent = $2, limit_period_start = $3 WHERE id = $4",
            )
            .bind(if hold.is_some() { amount } else { 0 })
            .bind(spent)
            .bind(period)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        if charge > 0 {
            let entry = LedgerWrite::model_usage(&s, Credits(charge));
            if append(&mut tx, &entry, now).await?.is_none() {
                tx.rollback().await.map_err(db)?;
                return Ok(Settled::AlreadySettled(Credits(charge)));
            }
        }
        if !insert_usage(&mut tx, &s.row, charge, s.cap_for(charge)).await? {
            // Another node settled it a moment ago, without a charge.
            tx.rollback().await.map_err(db)?;
            return Ok(Settled::AlreadySettled(Credits(charge)));
        }
        tx.commit().await.map_err(db)?;
        Ok(if hold.is_some() {
            Settled::Charged(Credits(charge))
        } else {
            Settled::ChargedWithoutHold(Credits(charge))
        })
    }

    async fn release_node_holds(&self, node_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = release_where(&mut tx, "h.node_id = $1", &node_id.to_owned()).await?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn release_expired_holds(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = release_where(&mut tx, "h.lease_until < $1", &millis(now)).await?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn ledger_check(&self, now: DateTime<Utc>) -> Result<Vec<Discrepancy>, StoreError> {
        let rows = sqlx::query(LEDGER_CHECK_SQL)
            .bind(millis(now))
            .fetch_all(&self.read)
            .await
            .map_err(db)?;
        let mut out = Vec::new();
        for r in rows {
            let d = Discrepancy {
                account_id: r.try_get("id").map_err(db)?,
                email: r.try_get("email").map_err(db)?,
                balance: Credits(r.try_get("balance").map_err(db)?),
                ledger_sum: Credits(r.try_get("ledger_sum").map_err(db)?),
                held: Credits(r.try_get("held").map_err(db)?),
                holds_sum: Credits(r.try_get("holds_sum").map_err(db)?),
                expired_holds: r.try_get("expired").map_err(db)?,
            };
            if d.disagrees() {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn claim_serving(&self, node_id: &str) -> Result<(), StoreError> {
        self.claim.claim(node_id).await
    }

    async fn renew_leases(&self, ids: &[String], until: DateTime<Utc>) -> Result<(), StoreError> {
        for chunk in ids.chunks(10_000) {
            sqlx::query(
                "UPDATE holds SET lease_until = GREATEST(lease_until, $1) WHERE id = ANY($2)",
            )
            .bind(millis(until))
            .bind(chunk)
            .execute(&self.write)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    async fn charged_rows(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ChargedRow>, StoreError> {
        usage::charged_rows(&self.read, after, limit).await
    }

    async fn charges_without_row(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        usage::charges_without_row(&self.read, limit).await
    }
}
