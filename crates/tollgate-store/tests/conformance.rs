//! Store conformance: one suite, run against both backends.
//!
//! Every test below is a plain `async fn(Harness)`; the `conformance!` macro at the bottom
//! turns each into a `#[tokio::test]` once for SQLite and once for PostgreSQL, so no storage
//! behaviour can be tested on one backend only (SPEC §8).
//!
//! PostgreSQL: base URL from `TOLLGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432`); each test creates its own `tg_test_<hex>` database
//! and drops it afterwards. An unreachable server fails the test, never skips it.

use chrono::{DateTime, Duration, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Connection, PgConnection, PgPool, SqlitePool};
use std::sync::Arc;
use std::time::Duration as StdDuration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tollgate_core::keys::{KeyKind, Retention, SpendLimit};
use tollgate_core::money::Credits;
use tollgate_core::store::{
    CardOutcome, Direction, EntryType, FreeTierCheck, HoldError, HoldRequest, LedgerWrite, NewKey,
    OperatorAccess, SavedCard, Settled, Settlement, Store, StoreError,
};
use tollgate_core::usage::{ChargeCap, UsageRecord, UsageStatus};
use tollgate_store::{PgStore, SqliteStore};

// ---------------------------------------------------------------------------------------------
// Harness: a fresh store per test, plus a raw pool on the same database.

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432";
/// PostgreSQL tests running at once. A store's pool may open 32 connections; an ordinary test
/// uses a few, so this many fit well under the server's default `max_connections` (100). A
/// test that opens a second node takes every slot and runs alone.
const PG_SLOTS: u32 = 8;
static PG_PARALLEL: Semaphore = Semaphore::const_new(PG_SLOTS as usize);
const GRANT: Credits = Credits(50_000);

/// A raw connection pool on the test database, for setup the store has no API for yet and
/// for tampering with the books.
enum Raw {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

impl Raw {
    /// Runs one statement; returns the rows it touched.
    async fn exec(&self, sql: &str) -> u64 {
        let done = match self {
            Raw::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            Raw::Pg(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        };
        done.unwrap_or_else(|e| panic!("raw SQL failed: {sql}: {e}"))
    }

    /// Makes every `MODEL_USAGE` ledger insert fail (a database fault in the middle of a
    /// settlement), or stops doing so.
    async fn fail_usage_charges(&self, fail: bool) {
        let sql: &[&str] = match (self, fail) {
            (Raw::Sqlite(_), true) => &["CREATE TRIGGER fail_usage BEFORE INSERT ON ledger WHEN NEW.type = 'MODEL_USAGE'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END"],
            (Raw::Sqlite(_), false) => &["DROP TRIGGER fail_usage"],
            (Raw::Pg(_), true) => &[
                "CREATE FUNCTION fail_usage() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER fail_usage BEFORE INSERT ON ledger FOR EACH ROW WHEN (NEW.type = 'MODEL_USAGE') EXECUTE FUNCTION fail_usage()",
            ],
            (Raw::Pg(_), false) => &["DROP TRIGGER fail_usage ON ledger", "DROP FUNCTION fail_usage()"],
        };
        for statement in sql {
            self.exec(statement).await;
        }
    }

    /// Runs a query returning a single BIGINT.
    async fn int(&self, sql: &str) -> i64 {
        let v = match self {
            Raw::Sqlite(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
            Raw::Pg(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
        };
        v.unwrap_or_else(|e| panic!("raw SQL failed: {sql}: {e}"))
    }
}

struct Harness {
    store: Arc<dyn Store>,
    raw: Raw,
    /// The store's URL, to open a second store ("another node") on the same database.
    url: String,
    /// PostgreSQL: the admin URL and database name to drop when the test ends.
    pg_cleanup: Option<(String, String)>,
    /// PostgreSQL: this test's share of `PG_PARALLEL`, released after the clean-up.
    pg_slots: Option<SemaphorePermit<'static>>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// A second, independent store on the same database, as another tollgate node would open.
    /// SQLite is served by one process (a second one is refused, see
    /// `a_sqlite_database_is_served_by_one_process`), so there "another node" is the same store
    /// reached from other tasks.
    async fn another_node(&mut self) -> Arc<dyn Store> {
        if matches!(self.raw, Raw::Sqlite(_)) {
            return self.store.clone();
        }
        if self.pg_slots.take().is_some() {
            // Two busy pools can use most of the server's connections: wait to run alone.
            let all = PG_PARALLEL
                .acquire_many(PG_SLOTS)
                .await
                .expect("semaphore open");
            self.pg_slots = Some(all);
        }
        tollgate_store::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("second store: {e}"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg_cleanup.take() else {
            return;
        };
        // Drop runs inside the test's runtime, so do the async clean-up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

async fn make_sqlite_store() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store = SqliteStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let raw = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("raw SQLite pool");
    Harness {
        store: Arc::new(store),
        raw: Raw::Sqlite(raw),
        url,
        pg_cleanup: None,
        pg_slots: None,
        _dir: Some(dir),
    }
}

async fn make_pg_store() -> Harness {
    let base =
        std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let admin_url = format!("{base}/postgres");
    let slot = PG_PARALLEL.acquire().await.expect("semaphore open");
    let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is unreachable at {admin_url}: {e}\n\
             The store conformance suite runs against PostgreSQL too and does not skip it: \
             start a server (check with `pg_isready`) or point TOLLGATE_TEST_POSTGRES_URL at one."
        )
    });
    let name = format!("tg_test_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = admin.close().await;
    let url = format!("{base}/{name}");
    let store = PgStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let raw = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("raw PostgreSQL pool");
    Harness {
        store: Arc::new(store),
        raw: Raw::Pg(raw),
        url,
        pg_cleanup: Some((admin_url, name)),
        pg_slots: Some(slot),
        _dir: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Creates account `acc-{name}` (`{name}@example.test`) and returns its id.
async fn account(h: &Harness, name: &str) -> String {
    let id = format!("acc-{name}");
    h.store
        .create_account(&id, &format!("{name}@example.test"), "argon2-hash")
        .await
        .expect("create account");
    id
}

/// Creates an account holding `credits` (one `ADJUSTMENT` top-up) and returns its id.
async fn funded_account(h: &Harness, name: &str, credits: i64) -> String {
    let id = account(h, name).await;
    let balance = h
        .store
        .write_ledger(topup(&id, credits, &format!("fund:{id}")))
        .await
        .expect("fund");
    assert_eq!(balance, Credits(credits));
    id
}

/// Creates regular key `key-{name}` (prefix derived from the name) on `account_id`; returns its id.
async fn key(h: &Harness, account_id: &str, name: &str) -> String {
    let id = format!("key-{name}");
    h.store
        .create_key(NewKey {
            id: id.clone(),
            account_id: account_id.to_owned(),
            prefix: format!("p-{name}"),
            hash: format!("hash-{name}"),
            name: name.to_owned(),
            kind: KeyKind::Regular,
        })
        .await
        .expect("create key");
    id
}

fn topup(account_id: &str, amount: i64, idempotency_key: &str) -> LedgerWrite {
    LedgerWrite {
        account_id: account_id.to_owned(),
        direction: Direction::Topup,
        kind: EntryType::Adjustment,
        amount: Credits(amount),
        model: None,
        reference_id: None,
        description: Some("test".into()),
        idempotency_key: idempotency_key.to_owned(),
    }
}

fn charge(account_id: &str, amount: i64, idempotency_key: &str) -> LedgerWrite {
    LedgerWrite {
        direction: Direction::Charge,
        ..topup(account_id, amount, idempotency_key)
    }
}

fn card(id: &str, fingerprint: &str) -> SavedCard {
    SavedCard {
        id: id.to_owned(),
        fingerprint: fingerprint.to_owned(),
        brand: "visa".into(),
        last4: "4242".into(),
    }
}

/// A hold of `min..=max` for `account_id`, made now on node-a with a 5-minute lease, no key
/// limit and no free-tier check. Tests adjust fields with struct-update syntax.
fn hold_req(id: &str, account_id: &str, min: i64, max: i64) -> HoldRequest {
    let now = Utc::now();
    HoldRequest {
        id: id.to_owned(),
        account_id: account_id.to_owned(),
        key_id: "key-none".into(),
        node_id: "node-a".into(),
        now,
        lease_until: now + Duration::minutes(5),
        min: Credits(min),
        max: Credits(max),
        key_limit: None,
        free_tier: None,
    }
}

fn settlement(hold_id: &str, account_id: &str, charge: i64) -> Settlement {
    Settlement {
        charge: Credits(charge),
        key_period_start: None,
        row: UsageRecord {
            inference_id: hold_id.to_owned(),
            request_id: format!("req-{hold_id}"),
            client_request_id: None,
            account_id: account_id.to_owned(),
            key_id: "key-none".into(),
            model: "tollgate/demo-chat".into(),
            provider: Some("demo".into()),
            status: UsageStatus::Succeeded,
            origin: "api",
            error_code: None,
            prompt_tokens: 10,
            completion_tokens: 20,
            cached_tokens: 0,
            credits: Credits::ZERO,
            capped: None,
            stream: false,
            duration_ms: 1,
            ttft_ms: None,
            created_at: Utc::now(),
        },
    }
}

/// A settlement of key `key_id`'s hold, counted in `period`.
fn key_settlement(
    hold_id: &str,
    account_id: &str,
    key_id: &str,
    charge: i64,
    period: DateTime<Utc>,
) -> Settlement {
    let mut s = settlement(hold_id, account_id, charge);
    s.row.key_id = key_id.to_owned();
    s.key_period_start = Some(period);
    s
}

/// The usage row of `inference_id`: `(credits, charge_capped)`; panics when there is none.
async fn usage_row(h: &Harness, inference_id: &str) -> (i64, Option<String>) {
    let rows = h
        .store
        .charged_rows(None, 10_000)
        .await
        .expect("usage rows");
    let row = rows
        .iter()
        .find(|r| r.inference_id == inference_id)
        .unwrap_or_else(|| panic!("no usage row for {inference_id}: {rows:?}"));
    (row.credits.0, row.capped.map(|c| c.as_str().to_owned()))
}

/// Makes a hold that must succeed; returns the amount reserved.
async fn hold_ok(h: &Harness, req: HoldRequest) -> i64 {
    let id = req.id.clone();
    match h.store.hold(req).await {
        Ok(hold) => hold.amount.0,
        Err(e) => panic!("hold {id} refused: {e:?}"),
    }
}

/// Settles a hold that must be live; returns the amount charged.
async fn settle_ok(h: &Harness, s: Settlement) -> i64 {
    let id = s.hold_id().to_owned();
    match h.store.settle(s).await {
        Ok(Settled::Charged(c)) => c.0,
        other => panic!("settle {id}: expected Charged, got {other:?}"),
    }
}

/// `(balance, held)` of an account.
async fn books(h: &Harness, account_id: &str) -> (i64, i64) {
    let a = h
        .store
        .account(account_id)
        .await
        .expect("read account")
        .expect("account exists");
    (a.balance.0, a.held.0)
}

/// Number of ledger entries of `kind` on an account.
async fn entries(h: &Harness, account_id: &str, kind: EntryType) -> i64 {
    h.raw
        .int(&format!(
            "SELECT COUNT(*) FROM ledger WHERE account_id = '{account_id}' AND type = '{}'",
            kind.as_str()
        ))
        .await
}

async fn assert_books_clean(h: &Harness, now: DateTime<Utc>) {
    let bad = h.store.ledger_check(now).await.expect("ledger check");
    assert!(bad.is_empty(), "ledger_check found discrepancies: {bad:#?}");
}

/// Gives a key a spending limit; the store has no API for that yet.
async fn set_key_limit(h: &Harness, key_id: &str, retention: Retention, threshold: i64) {
    let sql = format!(
        "UPDATE api_keys SET limit_retention = '{}', limit_threshold = {threshold} WHERE id = '{key_id}'",
        retention.as_str()
    );
    assert_eq!(h.raw.exec(&sql).await, 1, "key {key_id} exists");
}

// ---------------------------------------------------------------------------------------------
// 1. Accounts

async fn accounts_are_created_fetched_and_unique_by_email(h: Harness) {
    let created = h
        .store
        .create_account("acc-ada", "ada@example.test", "argon2-hash")
        .await
        .unwrap();
    assert_eq!(created.id, "acc-ada");
    assert_eq!(created.email, "ada@example.test");
    assert_eq!(
        (created.balance, created.held),
        (Credits::ZERO, Credits::ZERO)
    );
    assert!(!created.has_billing_method && !created.has_paid && !created.suspended);

    assert_eq!(
        h.store.account("acc-ada").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        h.store.account_by_email("ada@example.test").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(h.store.account("acc-nobody").await.unwrap(), None);
    assert_eq!(
        h.store
            .account_by_email("nobody@example.test")
            .await
            .unwrap(),
        None
    );

    let dup = h
        .store
        .create_account("acc-other", "ada@example.test", "x")
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict("email"))),
        "duplicate email: {dup:?}"
    );
    assert!(h.store.account("acc-other").await.unwrap().is_none());

    let dup_id = h
        .store
        .create_account("acc-ada", "someone-else@example.test", "x")
        .await;
    assert!(
        matches!(dup_id, Err(StoreError::Conflict(_))),
        "duplicate id: {dup_id:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. API keys

async fn keys_are_found_by_hash_and_unique_by_prefix(h: Harness) {
    let acc = account(&h, "ada").await;
    let new = NewKey {
        id: "key-1".into(),
        account_id: acc.clone(),
        prefix: "abcd1234".into(),
        hash: "hash-1".into(),
        name: "ci".into(),
        kind: KeyKind::Management,
    };
    let created = h.store.create_key(new.clone()).await.unwrap();
    assert_eq!(
        (
            created.id.as_str(),
            created.prefix.as_str(),
            created.name.as_str(),
            created.kind
        ),
        ("key-1", "abcd1234", "ci", KeyKind::Management)
    );
    assert!(!created.disabled && created.scopes.is_none() && created.limit.is_none());

    let (found, owner) = h
        .store
        .key_by_hash("hash-1")
        .await
        .unwrap()
        .expect("key by hash");
    assert_eq!(found, created);
    assert_eq!(owner.id, acc);
    assert_eq!(owner.email, "ada@example.test");

    assert!(h.store.key_by_hash("no-such-hash").await.unwrap().is_none());

    let dup = h
        .store
        .create_key(NewKey {
            id: "key-2".into(),
            hash: "hash-2".into(),
            ..new
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict("key prefix"))),
        "duplicate prefix: {dup:?}"
    );
    assert!(h.store.key_by_hash("hash-2").await.unwrap().is_none());

    // A key deleted by another process is no longer found (a serving SQLite store notices
    // outside commits within a millisecond; the bound here leaves room for a slow machine).
    h.raw
        .exec("UPDATE api_keys SET deleted_at = 1 WHERE id = 'key-1'")
        .await;
    let deadline = std::time::Instant::now() + StdDuration::from_millis(100);
    while h.store.key_by_hash("hash-1").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted key was still found after 100 ms"
        );
        tokio::time::sleep(StdDuration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Billing method and the one-time grant

async fn first_card_grants_once_per_account_and_per_fingerprint(h: Harness) {
    let a = account(&h, "a").await;
    let b = account(&h, "b").await;
    let c = account(&h, "c").await;

    // First card on an account: the grant, as one BONUS entry.
    let out = h
        .store
        .add_card(&a, card("card-1", "fp-1"), GRANT)
        .await
        .unwrap();
    assert_eq!(
        out,
        CardOutcome {
            granted: true,
            balance: GRANT
        }
    );
    let acc = h.store.account(&a).await.unwrap().unwrap();
    assert!(acc.has_billing_method);
    assert_eq!(acc.balance, GRANT);
    assert_eq!(entries(&h, &a, EntryType::Bonus).await, 1);

    // Second card, and the first card's fingerprint re-added: nothing more.
    let out = h
        .store
        .add_card(&a, card("card-2", "fp-2"), GRANT)
        .await
        .unwrap();
    assert_eq!(
        out,
        CardOutcome {
            granted: false,
            balance: GRANT
        }
    );
    let out = h
        .store
        .add_card(&a, card("card-3", "fp-1"), GRANT)
        .await
        .unwrap();
    assert_eq!(
        out,
        CardOutcome {
            granted: false,
            balance: GRANT
        }
    );
    assert_eq!(entries(&h, &a, EntryType::Bonus).await, 1);

    // Another account with an already-granted card: a billing method, but no grant.
    let out = h
        .store
        .add_card(&b, card("card-4", "fp-1"), GRANT)
        .await
        .unwrap();
    assert_eq!(
        out,
        CardOutcome {
            granted: false,
            balance: Credits::ZERO
        }
    );
    let acc = h.store.account(&b).await.unwrap().unwrap();
    assert!(acc.has_billing_method);
    assert_eq!(acc.balance, Credits::ZERO);
    assert_eq!(entries(&h, &b, EntryType::Bonus).await, 0);

    // A new account with a new card: the grant.
    let out = h
        .store
        .add_card(&c, card("card-5", "fp-3"), GRANT)
        .await
        .unwrap();
    assert_eq!(
        out,
        CardOutcome {
            granted: true,
            balance: GRANT
        }
    );
    assert_eq!(entries(&h, &c, EntryType::Bonus).await, 1);

    assert_books_clean(&h, Utc::now()).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Ledger writes

async fn ledger_writes_move_the_balance_once_and_never_below_available(h: Harness) {
    let acc = account(&h, "ada").await;

    let pay = LedgerWrite {
        kind: EntryType::Payment,
        ..topup(&acc, 1_000, "pay-1")
    };
    assert_eq!(
        h.store.write_ledger(pay.clone()).await.unwrap(),
        Credits(1_000)
    );
    assert_eq!(books(&h, &acc).await, (1_000, 0));

    // The same idempotency key applies once.
    assert_eq!(h.store.write_ledger(pay).await.unwrap(), Credits(1_000));
    assert_eq!(books(&h, &acc).await, (1_000, 0));
    assert_eq!(entries(&h, &acc, EntryType::Payment).await, 1);

    assert_eq!(
        h.store
            .write_ledger(charge(&acc, 400, "adj-1"))
            .await
            .unwrap(),
        Credits(600)
    );

    // Beyond the balance: refused, nothing written.
    let over = h.store.write_ledger(charge(&acc, 601, "adj-2")).await;
    assert!(
        matches!(over, Err(StoreError::Insufficient)),
        "charge beyond balance: {over:?}"
    );
    assert_eq!(books(&h, &acc).await, (600, 0));

    // Holds count: with 500 held only 100 is available.
    assert_eq!(hold_ok(&h, hold_req("inf-1", &acc, 500, 500)).await, 500);
    let over = h.store.write_ledger(charge(&acc, 101, "adj-3")).await;
    assert!(
        matches!(over, Err(StoreError::Insufficient)),
        "charge beyond available: {over:?}"
    );
    assert_eq!(
        h.store
            .write_ledger(charge(&acc, 100, "adj-4"))
            .await
            .unwrap(),
        Credits(500)
    );

    // A retried charge reports success without applying again, even now that it would not fit.
    assert_eq!(
        h.store
            .write_ledger(charge(&acc, 400, "adj-1"))
            .await
            .unwrap(),
        Credits(500)
    );
    assert_eq!(books(&h, &acc).await, (500, 500));
    assert_eq!(entries(&h, &acc, EntryType::Adjustment).await, 2);

    let zero = h.store.write_ledger(topup(&acc, 0, "zero")).await;
    assert!(zero.is_err(), "a zero amount is refused: {zero:?}");

    assert_books_clean(&h, Utc::now()).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Holds and settlement

async fn hold_reserves_up_to_max_and_settle_charges_once(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;

    assert_eq!(
        hold_ok(&h, hold_req("inf-1", &acc, 100, 3_000)).await,
        3_000
    );
    assert_eq!(books(&h, &acc).await, (10_000, 3_000));

    assert_eq!(
        h.store
            .settle(settlement("inf-1", &acc, 1_234))
            .await
            .unwrap(),
        Settled::Charged(Credits(1_234))
    );
    assert_eq!(books(&h, &acc).await, (8_766, 0));

    // Idempotent: a retry charges nothing more.
    assert_eq!(
        h.store
            .settle(settlement("inf-1", &acc, 1_234))
            .await
            .unwrap(),
        Settled::AlreadySettled(Credits(1_234))
    );
    assert_eq!(books(&h, &acc).await, (8_766, 0));

    let usage = h
        .raw
        .int(&format!(
            "SELECT COUNT(*) FROM ledger WHERE account_id = '{acc}' AND type = 'MODEL_USAGE' AND direction = 'CHARGE' \
             AND amount = 1234 AND reference_id = 'inf-1' AND model = 'tollgate/demo-chat'"
        ))
        .await;
    assert_eq!(usage, 1);
    assert_books_clean(&h, Utc::now()).await;
}

async fn hold_is_capped_by_available_credits(h: Harness) {
    let acc = funded_account(&h, "ada", 1_000).await;

    // Cannot cover the minimum: refused, nothing reserved.
    let err = h.store.hold(hold_req("inf-0", &acc, 1_001, 2_000)).await;
    assert!(
        matches!(
            err,
            Err(HoldError::Credits {
                available: Credits(1_000),
                needed: Credits(1_001)
            })
        ),
        "min beyond available: {err:?}"
    );
    assert_eq!(books(&h, &acc).await, (1_000, 0));

    // min ≤ available < max: reserves what is available.
    assert_eq!(hold_ok(&h, hold_req("inf-1", &acc, 100, 600)).await, 600);
    assert_eq!(hold_ok(&h, hold_req("inf-2", &acc, 100, 3_000)).await, 400);
    assert_eq!(books(&h, &acc).await, (1_000, 1_000));

    let err = h.store.hold(hold_req("inf-3", &acc, 1, 10)).await;
    assert!(
        matches!(
            err,
            Err(HoldError::Credits {
                available: Credits(0),
                needed: Credits(1)
            })
        ),
        "nothing left: {err:?}"
    );
    assert_eq!(books(&h, &acc).await, (1_000, 1_000));
    assert_books_clean(&h, Utc::now()).await;
}

async fn settle_never_takes_the_balance_below_zero(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;

    // A charge above the hold is taken while the account can pay it.
    assert_eq!(
        hold_ok(&h, hold_req("inf-0", &acc, 100, 1_000)).await,
        1_000
    );
    assert_eq!(settle_ok(&h, settlement("inf-0", &acc, 1_500)).await, 1_500);
    assert_eq!(books(&h, &acc).await, (8_500, 0));

    // Take the balance down to 1_000, then hold all of it in two holds.
    h.store
        .write_ledger(charge(&acc, 7_500, "adj-1"))
        .await
        .unwrap();
    assert_eq!(hold_ok(&h, hold_req("inf-1", &acc, 100, 600)).await, 600);
    assert_eq!(hold_ok(&h, hold_req("inf-2", &acc, 100, 600)).await, 400);

    // Clamped to what the account has beyond the other hold: 1_000 − 400.
    assert_eq!(settle_ok(&h, settlement("inf-1", &acc, 5_000)).await, 600);
    assert_eq!(books(&h, &acc).await, (400, 400));
    // Clamped to the whole remaining balance.
    assert_eq!(settle_ok(&h, settlement("inf-2", &acc, 999)).await, 400);
    assert_eq!(books(&h, &acc).await, (0, 0));

    assert_books_clean(&h, Utc::now()).await;
}

/// Another process (an operator's deduction) lowers the balance while a hold is live: the
/// settlement that follows at once charges at most what is left, never going below zero.
async fn settle_sees_a_deduction_made_by_another_process_at_once(h: Harness) {
    let acc = funded_account(&h, "ada", 1_000).await;
    assert_eq!(hold_ok(&h, hold_req("inf-0", &acc, 100, 800)).await, 800);
    h.raw
        .exec(&format!(
            "INSERT INTO ledger (account_id, direction, type, amount, idempotency_key, created_at)
             VALUES ('{acc}', 'CHARGE', 'ADJUSTMENT', 900, 'outside-deduction', 0)"
        ))
        .await;
    h.raw
        .exec(&format!(
            "UPDATE accounts SET balance = balance - 900 WHERE id = '{acc}'"
        ))
        .await;
    assert_eq!(settle_ok(&h, settlement("inf-0", &acc, 800)).await, 100);
    assert_eq!(books(&h, &acc).await, (0, 0));
    assert_books_clean(&h, Utc::now()).await;
}

/// A settlement whose hold was released while its request ran charges from its own record,
/// taking only credits no live hold reserves, and says so; a retry charges nothing more.
async fn a_settlement_whose_hold_is_gone_charges_from_its_record(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    assert_eq!(
        hold_ok(&h, hold_req("other", &acc, 100, 9_000)).await,
        9_000
    );
    assert_eq!(
        h.store
            .settle(settlement("inf-gone", &acc, 1_500))
            .await
            .unwrap(),
        Settled::ChargedWithoutHold(Credits(1_000))
    );
    assert_eq!(books(&h, &acc).await, (9_000, 9_000));
    assert_eq!(
        usage_row(&h, "inf-gone").await,
        (1_000, Some("balance".into()))
    );
    assert_eq!(
        h.store
            .settle(settlement("inf-gone", &acc, 1_500))
            .await
            .unwrap(),
        Settled::AlreadySettled(Credits(1_000))
    );
    // The live hold still gets everything it reserved.
    assert_eq!(settle_ok(&h, settlement("other", &acc, 9_000)).await, 9_000);
    assert_eq!(books(&h, &acc).await, (0, 0));
    assert_eq!(entries(&h, &acc, EntryType::ModelUsage).await, 2);
    assert_books_clean(&h, Utc::now()).await;
}

/// Every settlement writes its request's usage row with what it charged, a release
/// included (without a ledger entry), in the same step as the charge.
async fn settle_without_charge_releases_the_hold_and_logs_the_request(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    assert_eq!(
        hold_ok(&h, hold_req("inf-1", &acc, 100, 2_000)).await,
        2_000
    );
    let mut failed = settlement("inf-1", &acc, 0);
    failed.row.status = UsageStatus::Failed;
    assert_eq!(settle_ok(&h, failed).await, 0);
    assert_eq!(books(&h, &acc).await, (10_000, 0));
    assert_eq!(entries(&h, &acc, EntryType::ModelUsage).await, 0);
    let rows = h.store.charged_rows(None, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(!rows[0].succeeded);
    assert_eq!(
        (rows[0].credits, rows[0].ledger),
        (Credits::ZERO, Credits::ZERO)
    );

    assert_eq!(
        hold_ok(&h, hold_req("inf-2", &acc, 100, 2_000)).await,
        2_000
    );
    let mut capped = settlement("inf-2", &acc, 2_000);
    capped.row.capped = Some(ChargeCap::Hold);
    assert_eq!(settle_ok(&h, capped).await, 2_000);
    let rows = h.store.charged_rows(Some("inf-1"), 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!((r.inference_id.as_str(), r.succeeded), ("inf-2", true));
    assert_eq!(
        (r.credits, r.ledger, r.capped),
        (Credits(2_000), Credits(2_000), Some(ChargeCap::Hold))
    );
    assert_eq!((r.prompt_tokens, r.completion_tokens), (10, 20));
    assert!(h.store.charges_without_row(10).await.unwrap().is_empty());

    // A charge the ledger has without a usage row is found.
    h.raw
        .exec(&format!(
            "INSERT INTO ledger (account_id, direction, type, amount, reference_id, idempotency_key, created_at)
             VALUES ('{acc}', 'CHARGE', 'MODEL_USAGE', 5, 'inf-lost', 'usage:inf-lost', 0)"
        ))
        .await;
    assert_eq!(
        h.store.charges_without_row(10).await.unwrap(),
        vec!["inf-lost".to_owned()]
    );
}

/// A settlement whose transaction fails leaves its hold in place (still reserving its
/// credits, still counted), and its retry charges once.
async fn a_failed_settlement_keeps_its_hold_and_its_retry_charges_once(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    assert_eq!(
        hold_ok(&h, hold_req("inf-1", &acc, 100, 6_000)).await,
        6_000
    );
    h.raw.fail_usage_charges(true).await;
    let failed = h.store.settle(settlement("inf-1", &acc, 2_500)).await;
    assert!(failed.is_err(), "the injected failure: {failed:?}");
    assert_eq!(books(&h, &acc).await, (10_000, 6_000));
    // The hold still reserves its credits.
    assert!(matches!(
        h.store.hold(hold_req("inf-2", &acc, 4_001, 5_000)).await,
        Err(HoldError::Credits { .. })
    ));
    assert_books_clean(&h, Utc::now()).await;
    h.raw.fail_usage_charges(false).await;
    assert_eq!(settle_ok(&h, settlement("inf-1", &acc, 2_500)).await, 2_500);
    assert_eq!(books(&h, &acc).await, (7_500, 0));
    assert_eq!(entries(&h, &acc, EntryType::ModelUsage).await, 1);
    assert_eq!(usage_row(&h, "inf-1").await, (2_500, None));
    assert_books_clean(&h, Utc::now()).await;
}

/// A renewed lease outlives its first end: the reaper leaves the hold to its settlement.
async fn renewed_leases_are_not_reaped(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    let now = Utc::now();
    let short = |id: &str| HoldRequest {
        lease_until: now + Duration::seconds(1),
        ..hold_req(id, &acc, 1, 1_000)
    };
    hold_ok(&h, short("renewed")).await;
    hold_ok(&h, short("left")).await;
    h.store
        .renew_leases(
            &["renewed".into(), "settled-long-ago".into()],
            now + Duration::minutes(10),
        )
        .await
        .expect("renew");
    assert_eq!(
        h.store
            .release_expired_holds(now + Duration::seconds(5))
            .await
            .unwrap(),
        1
    );
    assert_eq!(books(&h, &acc).await, (10_000, 1_000));
    assert_eq!(settle_ok(&h, settlement("renewed", &acc, 700)).await, 700);
    assert_eq!(books(&h, &acc).await, (9_300, 0));
    assert_books_clean(&h, now + Duration::seconds(5)).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Concurrency: the sum of holds and charges never exceeds the balance

async fn concurrent_holds_never_overspend(mut h: Harness) {
    const START: i64 = 10_000;
    const TASKS: usize = 50;
    let acc = funded_account(&h, "ada", START).await;
    // Half the requests go through a second store on the same database, as on a second node.
    let nodes = [h.store.clone(), h.another_node().await];

    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let store = nodes[i % 2].clone();
        let acc = acc.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("inf-{i}");
            let req = HoldRequest {
                node_id: format!("node-{}", i % 2),
                ..hold_req(&id, &acc, 300, 1_000)
            };
            match store.hold(req).await {
                Ok(hold) => {
                    assert!(
                        (300..=1_000).contains(&hold.amount.0),
                        "hold {id} reserved {:?}",
                        hold.amount
                    );
                    match store.settle(settlement(&id, &acc, 700)).await {
                        Ok(Settled::Charged(c)) => c.0,
                        other => panic!("settle {id}: {other:?}"),
                    }
                }
                Err(HoldError::Credits { .. }) => 0,
                Err(e) => panic!("hold {id}: unexpected {e:?}"),
            }
        }));
    }
    let mut charged = Vec::new();
    for t in tasks {
        charged.push(t.await.expect("task panicked"));
    }
    let total: i64 = charged.iter().sum();
    let paid = charged.iter().filter(|&&c| c > 0).count();

    assert!(paid >= 1, "no request was served");
    assert!(
        charged.iter().all(|&c| c == 0 || (300..=700).contains(&c)),
        "charges: {charged:?}"
    );
    assert!(total <= START, "charged {total} out of {START}");
    let (balance, held) = books(&h, &acc).await;
    assert!(balance >= 0, "balance went negative: {balance}");
    assert_eq!(balance, START - total);
    assert_eq!(held, 0);
    assert_eq!(
        entries(&h, &acc, EntryType::ModelUsage).await,
        i64::try_from(paid).unwrap()
    );
    assert_eq!(h.raw.int("SELECT COUNT(*) FROM holds").await, 0);
    assert_books_clean(&h, Utc::now()).await;
}

/// Holds, settlements asking for more than their hold, and operator top-ups and charges race
/// on four threads, with more demand than credits throughout: every settlement still gets at
/// least what its hold reserved (no hold ever promised credits another hold or a charge was
/// taking), operator charges take only what no hold reserved, and the books add up.
async fn holds_settlements_and_operator_charges_racing_keep_every_reservation(h: Harness) {
    const START: i64 = 2_000;
    const TASKS: usize = 16;
    const ROUNDS: usize = 40;
    let acc = funded_account(&h, "ada", START).await;
    // One hold first, so the others can be placed from cached figures.
    let first = hold_ok(&h, hold_req("inf-first", &acc, 1, 1)).await;
    settle_ok(&h, settlement("inf-first", &acc, first)).await;

    // Every task starts when all exist, and yields after each step so that the tasks of a
    // thread interleave (a SQLite step alone completes without yielding).
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, acc, start) = (h.store.clone(), acc.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            // (reserved, charged) per request, and what operator entries took (net).
            let (mut served, mut operator) = (Vec::new(), 0);
            start.wait().await;
            for round in 0..ROUNDS {
                tokio::task::yield_now().await;
                let id = format!("inf-{i}-{round}");
                if i % 4 == 0 && round % 2 == 0 {
                    store
                        .write_ledger(topup(&acc, 300, &id))
                        .await
                        .expect("operator top-up");
                    operator -= 300;
                    continue;
                }
                if i % 4 == 0 {
                    match store.write_ledger(charge(&acc, 150, &id)).await {
                        Ok(_) => operator += 150,
                        Err(StoreError::Insufficient) => {}
                        Err(e) => panic!("operator charge {id}: {e:?}"),
                    }
                    continue;
                }
                match store.hold(hold_req(&id, &acc, 100, 400)).await {
                    Ok(hold) => {
                        tokio::task::yield_now().await;
                        match store.settle(settlement(&id, &acc, 600)).await {
                            Ok(Settled::Charged(c)) => served.push((hold.amount.0, c.0)),
                            other => panic!("settle {id}: {other:?}"),
                        }
                    }
                    Err(HoldError::Credits { .. }) => {}
                    Err(e) => panic!("hold {id}: unexpected {e:?}"),
                }
            }
            (served, operator)
        }));
    }
    let mut spent = first;
    let mut requests = 0;
    for t in tasks {
        let (served, operator) = t.await.expect("task panicked");
        for (reserved, charged) in &served {
            assert!(
                charged >= reserved,
                "reserved {reserved} but could charge only {charged}"
            );
            spent += charged;
        }
        requests += served.len();
        spent += operator;
    }
    assert!(requests > 0, "no request was served");
    let (balance, held) = books(&h, &acc).await;
    assert_eq!((balance, held), (START - spent, 0));
    assert!(balance >= 0, "balance went negative: {balance}");
    assert_books_clean(&h, Utc::now()).await;
}

/// All holds race at once, then all settlements race at once, across two nodes: the holds
/// reserve exactly the balance and no more, and charges above the holds are clamped so that
/// together they take exactly the balance.
async fn simultaneous_holds_then_settlements_stay_within_the_balance(mut h: Harness) {
    const START: i64 = 10_000;
    const TASKS: usize = 50;
    let acc = funded_account(&h, "ada", START).await;
    let nodes = [h.store.clone(), h.another_node().await];
    // Every task has tried its hold; then the test has inspected the reservations.
    let all_held = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let go_settle = Arc::new(tokio::sync::Barrier::new(TASKS + 1));

    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, acc) = (nodes[i % 2].clone(), acc.clone());
        let (all_held, go_settle) = (all_held.clone(), go_settle.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("inf-{i}");
            let req = HoldRequest {
                node_id: format!("node-{}", i % 2),
                ..hold_req(&id, &acc, 300, 1_000)
            };
            // Reach the gates whatever happens, so one failure cannot hang the others.
            let held = store.hold(req).await;
            all_held.wait().await;
            go_settle.wait().await;
            match held {
                Ok(hold) => match store.settle(settlement(&id, &acc, 1_500)).await {
                    Ok(Settled::Charged(c)) => (hold.amount.0, c.0),
                    other => panic!("settle {id}: {other:?}"),
                },
                Err(HoldError::Credits { .. }) => (0, 0),
                Err(e) => panic!("hold {id}: unexpected {e:?}"),
            }
        }));
    }
    let gate = StdDuration::from_secs(60);
    tokio::time::timeout(gate, all_held.wait())
        .await
        .expect("holds did not finish");
    let (balance, held) = books(&h, &acc).await;
    let in_check = h
        .store
        .ledger_check(Utc::now())
        .await
        .expect("ledger check");
    tokio::time::timeout(gate, go_settle.wait())
        .await
        .expect("tasks did not reach settlement");

    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task panicked"));
    }
    // Ten holds of 1_000 fit exactly; the other forty find nothing left; the check agrees.
    assert_eq!((balance, held), (START, START));
    assert!(
        in_check.is_empty(),
        "ledger check during holds: {in_check:?}"
    );
    let reserved: Vec<i64> = results.iter().map(|r| r.0).filter(|&a| a > 0).collect();
    assert_eq!(reserved, vec![1_000; 10]);
    // Each asked for 1_500 and got its own 1_000: the others' holds were never touched.
    let charged: Vec<i64> = results.iter().map(|r| r.1).filter(|&c| c > 0).collect();
    assert_eq!(charged, vec![1_000; 10]);
    assert_eq!(books(&h, &acc).await, (0, 0));
    assert_eq!(entries(&h, &acc, EntryType::ModelUsage).await, 10);
    assert_books_clean(&h, Utc::now()).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Free tier

async fn free_tier_limits_in_flight_and_hourly_requests(h: Harness) {
    let acc = account(&h, "free").await;
    let t0 = Utc::now();
    let free = FreeTierCheck {
        hourly_limit: 3,
        max_in_flight: 1,
    };
    let at = |id: &str, now: DateTime<Utc>| HoldRequest {
        now,
        lease_until: now + Duration::minutes(5),
        free_tier: Some(free),
        ..hold_req(id, &acc, 0, 0)
    };

    assert_eq!(hold_ok(&h, at("f-1", t0)).await, 0);
    let err = h.store.hold(at("f-2", t0 + Duration::seconds(1))).await;
    assert!(
        matches!(err, Err(HoldError::FreeInFlight)),
        "second request in flight: {err:?}"
    );
    settle_ok(&h, settlement("f-1", &acc, 0)).await;

    // The refused request was not counted: two more fit in the hour.
    for (id, minutes) in [("f-2", 10), ("f-3", 20)] {
        assert_eq!(
            hold_ok(&h, at(id, t0 + Duration::minutes(minutes))).await,
            0
        );
        settle_ok(&h, settlement(id, &acc, 0)).await;
    }
    let err = h.store.hold(at("f-4", t0 + Duration::minutes(30))).await;
    match err {
        // The oldest request (t0) leaves the window 30 minutes later.
        Err(HoldError::FreeHourly { retry_after_secs }) => {
            assert!((1..=3_600).contains(&retry_after_secs));
            assert_eq!(retry_after_secs, 1_800);
        }
        other => panic!("fourth request in the hour: {other:?}"),
    }

    // The window rolls: once t0 is over an hour old, one more fits.
    assert_eq!(
        hold_ok(
            &h,
            at("f-5", t0 + Duration::minutes(60) + Duration::seconds(1))
        )
        .await,
        0
    );
    assert_eq!(books(&h, &acc).await, (0, 0));
}

// ---------------------------------------------------------------------------------------------
// 8. Key spending limits

async fn key_limit_caps_holds_within_its_period(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    let key_id = key(&h, &acc, "ada").await;
    set_key_limit(&h, &key_id, Retention::Day, 1_000).await;

    let (key, _) = h.store.key_by_hash("hash-ada").await.unwrap().unwrap();
    let limit = SpendLimit {
        retention: Retention::Day,
        threshold: Credits(1_000),
    };
    assert_eq!(key.limit, Some(limit));

    let today = Retention::Day.period_start(Utc::now());
    let tomorrow = today + Duration::days(1);
    let limited = |id: &str, min: i64, max: i64, period: DateTime<Utc>| HoldRequest {
        key_id: key_id.clone(),
        key_limit: Some((limit, period)),
        ..hold_req(id, &acc, min, max)
    };
    let settle_in = |id: &str, charge: i64, period: DateTime<Utc>| {
        key_settlement(id, &acc, &key_id, charge, period)
    };

    assert_eq!(hold_ok(&h, limited("inf-1", 100, 600, today)).await, 600);
    assert_eq!(settle_ok(&h, settle_in("inf-1", 600, today)).await, 600);

    // Capped by what the limit has left (1_000 − 600), not by the account's credits.
    assert_eq!(hold_ok(&h, limited("inf-2", 100, 3_000, today)).await, 400);
    // A live hold counts against the limit too.
    let err = h.store.hold(limited("inf-3", 1, 100, today)).await;
    assert!(
        matches!(err, Err(HoldError::KeyLimit)),
        "limit held: {err:?}"
    );
    assert_eq!(settle_ok(&h, settle_in("inf-2", 400, today)).await, 400);

    let err = h.store.hold(limited("inf-4", 1, 3_000, today)).await;
    assert!(
        matches!(err, Err(HoldError::KeyLimit)),
        "limit spent: {err:?}"
    );
    assert_eq!(books(&h, &acc).await, (9_000, 0));

    // A new period starts afresh.
    assert_eq!(
        hold_ok(&h, limited("inf-5", 100, 3_000, tomorrow)).await,
        1_000
    );
    assert_eq!(settle_ok(&h, settle_in("inf-5", 250, tomorrow)).await, 250);
    assert_eq!(
        hold_ok(&h, limited("inf-6", 100, 3_000, tomorrow)).await,
        750
    );
    assert_eq!(books(&h, &acc).await, (8_750, 750));
    assert_books_clean(&h, Utc::now()).await;
}

/// A key's period never moves backwards: a request held before midnight and settled after
/// a request of the new day does not take the period back (nor reset the new day's
/// spending), and a node whose clock is behind counts the new day's spending.
async fn key_periods_never_move_backwards(h: Harness) {
    let acc = funded_account(&h, "ada", 100_000).await;
    let key_id = key(&h, &acc, "ada").await;
    set_key_limit(&h, &key_id, Retention::Day, 1_000).await;
    let limit = SpendLimit {
        retention: Retention::Day,
        threshold: Credits(1_000),
    };
    let day1 = Retention::Day.period_start(Utc::now());
    let day2 = day1 + Duration::days(1);
    let held_at = |id: &str, max: i64, clock: DateTime<Utc>| HoldRequest {
        key_id: key_id.clone(),
        now: clock,
        key_limit: Some((limit, Retention::Day.period_start(clock))),
        ..hold_req(id, &acc, 1, max)
    };
    let hold_in = |h: &Harness, req: HoldRequest| {
        let store = h.store.clone();
        async move {
            let hold = store.hold(req).await.expect("hold");
            (
                hold.amount.0,
                hold.key_period.expect("a limited key's period"),
            )
        }
    };
    // Held at 23:59:59 of day 1.
    let (late, late_period) = hold_in(&h, held_at("late", 400, day2 - Duration::seconds(1))).await;
    assert_eq!((late, late_period), (400, day1));
    // A request of day 2 comes and goes.
    let (early, early_period) =
        hold_in(&h, held_at("early", 300, day2 + Duration::seconds(1))).await;
    assert_eq!((early, early_period), (300, day2));
    settle_ok(
        &h,
        key_settlement("early", &acc, &key_id, 300, early_period),
    )
    .await;
    // The day-1 request settles afterwards: day 1 is over, day 2 keeps its 300.
    settle_ok(&h, key_settlement("late", &acc, &key_id, 400, late_period)).await;
    let stored = h
        .raw
        .int(&format!(
            "SELECT limit_period_start FROM api_keys WHERE id = '{key_id}'"
        ))
        .await;
    assert_eq!(stored, day2.timestamp_millis());
    let spent = h
        .raw
        .int(&format!(
            "SELECT limit_spent FROM api_keys WHERE id = '{key_id}'"
        ))
        .await;
    assert_eq!(spent, 300);
    // A node whose clock still says day 1 counts in day 2: 700 left.
    let (behind, behind_period) =
        hold_in(&h, held_at("behind", 5_000, day2 - Duration::seconds(5))).await;
    assert_eq!((behind, behind_period), (700, day2));
    let stored = h
        .raw
        .int(&format!(
            "SELECT limit_period_start FROM api_keys WHERE id = '{key_id}'"
        ))
        .await;
    assert_eq!(stored, day2.timestamp_millis());
    assert_books_clean(&h, Utc::now()).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Leases and restarts

async fn expired_leases_and_restarted_nodes_release_holds_without_charging(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    let now = Utc::now();
    let leased = |id: &str, node: &str, max: i64, lease_until: DateTime<Utc>| HoldRequest {
        node_id: node.to_owned(),
        now: now - Duration::minutes(10),
        lease_until,
        ..hold_req(id, &acc, 1, max)
    };
    hold_ok(
        &h,
        leased("expired-a", "node-a", 1_000, now - Duration::minutes(1)),
    )
    .await;
    hold_ok(
        &h,
        leased(
            "expired-b",
            "node-b",
            2_000,
            now - Duration::milliseconds(1),
        ),
    )
    .await;
    hold_ok(&h, leased("edge", "node-b", 300, now)).await;
    hold_ok(
        &h,
        leased("live-a", "node-a", 500, now + Duration::minutes(5)),
    )
    .await;
    hold_ok(
        &h,
        leased("live-b", "node-b", 700, now + Duration::minutes(5)),
    )
    .await;
    assert_eq!(books(&h, &acc).await, (10_000, 4_500));

    // Only leases that ended before `now` (a lease ending exactly now is still live).
    assert_eq!(h.store.release_expired_holds(now).await.unwrap(), 2);
    assert_eq!(books(&h, &acc).await, (10_000, 1_500));
    assert_books_clean(&h, now).await;

    // A restarting node-a releases its own holds, and only those.
    assert_eq!(h.store.release_node_holds("node-a").await.unwrap(), 1);
    assert_eq!(books(&h, &acc).await, (10_000, 1_000));
    assert_books_clean(&h, now).await;
    assert_eq!(h.store.release_node_holds("node-a").await.unwrap(), 0);

    // Releasing charged nothing; node-b's holds still settle normally.
    assert_eq!(entries(&h, &acc, EntryType::ModelUsage).await, 0);
    assert_eq!(settle_ok(&h, settlement("live-b", &acc, 100)).await, 100);
    assert_eq!(settle_ok(&h, settlement("edge", &acc, 0)).await, 0);
    assert_eq!(books(&h, &acc).await, (9_900, 0));
    // A released hold's request that settles after all is charged from its record.
    assert_eq!(
        h.store
            .settle(settlement("expired-a", &acc, 900))
            .await
            .unwrap(),
        Settled::ChargedWithoutHold(Credits(900))
    );
    assert_eq!(books(&h, &acc).await, (9_000, 0));
    assert_books_clean(&h, now).await;
}

async fn released_holds_give_back_the_key_limit(h: Harness) {
    let acc = funded_account(&h, "ada", 10_000).await;
    let key_id = key(&h, &acc, "ada").await;
    set_key_limit(&h, &key_id, Retention::NoReset, 1_000).await;
    let limit = SpendLimit {
        retention: Retention::NoReset,
        threshold: Credits(1_000),
    };
    let now = Utc::now();
    let limited = |id: &str, node: &str, lease_until: DateTime<Utc>| HoldRequest {
        key_id: key_id.clone(),
        node_id: node.to_owned(),
        lease_until,
        key_limit: Some((limit, DateTime::<Utc>::UNIX_EPOCH)),
        ..hold_req(id, &acc, 1, 1_000)
    };

    assert_eq!(
        hold_ok(&h, limited("inf-1", "node-a", now - Duration::seconds(1))).await,
        1_000
    );
    assert!(matches!(
        h.store.hold(limited("inf-2", "node-a", now)).await,
        Err(HoldError::KeyLimit)
    ));
    assert_eq!(h.store.release_expired_holds(now).await.unwrap(), 1);

    assert_eq!(
        hold_ok(&h, limited("inf-3", "node-c", now + Duration::minutes(5))).await,
        1_000
    );
    assert!(matches!(
        h.store.hold(limited("inf-4", "node-a", now)).await,
        Err(HoldError::KeyLimit)
    ));
    assert_eq!(h.store.release_node_holds("node-c").await.unwrap(), 1);

    assert_eq!(
        hold_ok(&h, limited("inf-5", "node-a", now + Duration::minutes(5))).await,
        1_000
    );
    assert_eq!(books(&h, &acc).await, (10_000, 1_000));
    assert_books_clean(&h, now).await;
}

/// The lease sweeper and late settlements race for the same expired holds, from two nodes:
/// every call succeeds, each hold is either charged or released (never both), and the account
/// and key reservations come back to exactly zero.
async fn lease_sweeper_racing_settlements_keeps_the_books(mut h: Harness) {
    const START: i64 = 1_000_000;
    let acc = funded_account(&h, "ada", START).await;
    let key_id = key(&h, &acc, "ada").await;
    set_key_limit(&h, &key_id, Retention::NoReset, START).await;
    let limit = SpendLimit {
        retention: Retention::NoReset,
        threshold: Credits(START),
    };
    let nodes = [h.store.clone(), h.another_node().await];

    let mut charged = 0;
    for round in 0..10 {
        let now = Utc::now();
        for i in 0..20 {
            let req = HoldRequest {
                key_id: key_id.clone(),
                now: now - Duration::minutes(10),
                lease_until: now - Duration::seconds(1),
                key_limit: Some((limit, DateTime::<Utc>::UNIX_EPOCH)),
                ..hold_req(&format!("r{round}-{i}"), &acc, 1, 100)
            };
            assert_eq!(hold_ok(&h, req).await, 100);
        }
        let mut settles = Vec::new();
        let mut sweeps = Vec::new();
        for i in 0..20 {
            let (store, acc) = (nodes[i % 2].clone(), acc.clone());
            let s = key_settlement(
                &format!("r{round}-{i}"),
                &acc,
                &key_id,
                50,
                DateTime::<Utc>::UNIX_EPOCH,
            );
            settles.push(tokio::spawn(async move { store.settle(s).await }));
            if i % 4 == 0 {
                let store = nodes[(i / 4) % 2].clone();
                sweeps.push(tokio::spawn(async move {
                    store.release_expired_holds(now).await
                }));
            }
        }
        for t in settles {
            match t.await.expect("settle task") {
                // Settled before the sweep, or after it released the hold: charged once
                // either way.
                Ok(Settled::Charged(c) | Settled::ChargedWithoutHold(c)) => {
                    assert_eq!(c, Credits(50));
                    charged += 50;
                }
                other => panic!("round {round}: settle racing the sweeper: {other:?}"),
            }
        }
        for t in sweeps {
            let swept = t.await.expect("sweep task");
            assert!(
                swept.is_ok(),
                "round {round}: sweep racing settlements: {swept:?}"
            );
        }
        assert_eq!(books(&h, &acc).await, (START - charged, 0), "round {round}");
        assert_books_clean(&h, now).await;
    }
    let key_held = h
        .raw
        .int(&format!("SELECT held FROM api_keys WHERE id = '{key_id}'"))
        .await;
    assert_eq!(key_held, 0);
    assert_eq!(charged, 10 * 20 * 50);
    assert_eq!(entries(&h, &acc, EntryType::ModelUsage).await, charged / 50);
    let spent = h
        .raw
        .int(&format!(
            "SELECT limit_spent FROM api_keys WHERE id = '{key_id}'"
        ))
        .await;
    assert_eq!(spent, charged);
}

// ---------------------------------------------------------------------------------------------
// 10. The ledger check

async fn ledger_check_detects_a_tampered_balance(h: Harness) {
    let acc = funded_account(&h, "ada", 1_000).await;
    let _other = funded_account(&h, "bob", 500).await;
    assert_books_clean(&h, Utc::now()).await;

    assert_eq!(
        h.raw
            .exec(&format!(
                "UPDATE accounts SET balance = balance + 1 WHERE id = '{acc}'"
            ))
            .await,
        1
    );
    let bad = h.store.ledger_check(Utc::now()).await.unwrap();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    let d = &bad[0];
    assert_eq!(
        (d.account_id.as_str(), d.email.as_str()),
        (acc.as_str(), "ada@example.test")
    );
    assert_eq!((d.balance, d.ledger_sum), (Credits(1_001), Credits(1_000)));
    assert_eq!(
        (d.held, d.holds_sum, d.expired_holds),
        (Credits::ZERO, Credits::ZERO, 0)
    );

    // Restored balance, but a `held` that no hold explains.
    h.raw
        .exec(&format!(
            "UPDATE accounts SET balance = balance - 1, held = held + 5 WHERE id = '{acc}'"
        ))
        .await;
    let bad = h.store.ledger_check(Utc::now()).await.unwrap();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert_eq!(
        (bad[0].balance, bad[0].ledger_sum),
        (Credits(1_000), Credits(1_000))
    );
    assert_eq!((bad[0].held, bad[0].holds_sum), (Credits(5), Credits::ZERO));
}

async fn ledger_check_detects_an_expired_hold(h: Harness) {
    let acc = funded_account(&h, "ada", 1_000).await;
    let now = Utc::now();
    hold_ok(
        &h,
        HoldRequest {
            lease_until: now + Duration::minutes(1),
            ..hold_req("inf-1", &acc, 1, 300)
        },
    )
    .await;
    assert_books_clean(&h, now).await;

    let later = now + Duration::minutes(2);
    let bad = h.store.ledger_check(later).await.unwrap();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    let d = &bad[0];
    assert_eq!(d.account_id, acc);
    assert_eq!((d.balance, d.ledger_sum), (Credits(1_000), Credits(1_000)));
    assert_eq!(
        (d.held, d.holds_sum, d.expired_holds),
        (Credits(300), Credits(300), 1)
    );

    assert_eq!(h.store.release_expired_holds(later).await.unwrap(), 1);
    assert_books_clean(&h, later).await;
    assert_eq!(books(&h, &acc).await, (1_000, 0));
}

// ---------------------------------------------------------------------------------------------
// 11. Serving

/// Live holds of a SQLite store are kept by the process serving it, so a second process may
/// not serve the same file, and operator commands of another process are sent to it.
/// PostgreSQL nodes share their holds and any number may serve, each under an id of its own:
/// a second live node with the same id is refused (its restart would release the other's
/// live holds), until the first is gone.
async fn one_process_serves_under_each_node_id(mut h: Harness) {
    h.store.claim_serving("node-a").await.expect("first claim");
    h.store
        .claim_serving("node-a")
        .await
        .expect("claiming again");
    match h.raw {
        Raw::Sqlite(_) => {
            let second = tollgate_store::connect(&h.url).await.expect("second store");
            match second.claim_serving("node-b").await {
                Err(StoreError::Database(m)) => assert!(m.contains("already serving"), "{m}"),
                other => panic!("a second serving process was let in: {other:?}"),
            }
            let control = h.store.control_socket().expect("a control socket");
            assert_eq!(
                second.operator_access().await.unwrap(),
                OperatorAccess::Server(control)
            );
            // The first process going away frees the database for the next.
            let first = std::mem::replace(&mut h.store, second.clone());
            drop(first);
            assert_eq!(
                second.operator_access().await.unwrap(),
                OperatorAccess::Direct
            );
            second
                .claim_serving("node-b")
                .await
                .expect("claim after the first closed");
        }
        Raw::Pg(_) => {
            assert_eq!(
                h.store.operator_access().await.unwrap(),
                OperatorAccess::Direct
            );
            let second = h.another_node().await;
            match second.claim_serving("node-a").await {
                Err(StoreError::Database(m)) => assert!(m.contains("node-a"), "{m}"),
                other => panic!("a second node with the same id was let in: {other:?}"),
            }
            second
                .claim_serving("node-b")
                .await
                .expect("a second node with its own id");
            // Once the first node is gone, its id can serve again.
            let third = h.another_node().await;
            drop(std::mem::replace(&mut h.store, third.clone()));
            let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
            loop {
                match third.claim_serving("node-a").await {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(StdDuration::from_millis(50)).await;
                    }
                    Err(e) => panic!("node-a's id stayed claimed after its node was gone: {e}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every test, once per backend.

macro_rules! conformance {
    ($backend:ident, $make:ident) => {
        mod $backend {
            conformance!(@case $make, accounts_are_created_fetched_and_unique_by_email);
            conformance!(@case $make, keys_are_found_by_hash_and_unique_by_prefix);
            conformance!(@case $make, first_card_grants_once_per_account_and_per_fingerprint);
            conformance!(@case $make, ledger_writes_move_the_balance_once_and_never_below_available);
            conformance!(@case $make, hold_reserves_up_to_max_and_settle_charges_once);
            conformance!(@case $make, hold_is_capped_by_available_credits);
            conformance!(@case $make, settle_never_takes_the_balance_below_zero);
            conformance!(@case $make, settle_sees_a_deduction_made_by_another_process_at_once);
            conformance!(@case $make, a_settlement_whose_hold_is_gone_charges_from_its_record);
            conformance!(@case $make, settle_without_charge_releases_the_hold_and_logs_the_request);
            conformance!(@case $make, a_failed_settlement_keeps_its_hold_and_its_retry_charges_once);
            conformance!(@case $make, renewed_leases_are_not_reaped);
            conformance!(@case $make, concurrent_holds_never_overspend,
                flavor = "multi_thread", worker_threads = 4);
            conformance!(@case $make, holds_settlements_and_operator_charges_racing_keep_every_reservation,
                flavor = "multi_thread", worker_threads = 4);
            conformance!(@case $make, simultaneous_holds_then_settlements_stay_within_the_balance,
                flavor = "multi_thread", worker_threads = 4);
            conformance!(@case $make, free_tier_limits_in_flight_and_hourly_requests);
            conformance!(@case $make, key_limit_caps_holds_within_its_period);
            conformance!(@case $make, key_periods_never_move_backwards);
            conformance!(@case $make, expired_leases_and_restarted_nodes_release_holds_without_charging);
            conformance!(@case $make, released_holds_give_back_the_key_limit);
            conformance!(@case $make, lease_sweeper_racing_settlements_keeps_the_books,
                flavor = "multi_thread", worker_threads = 4);
            conformance!(@case $make, ledger_check_detects_a_tampered_balance);
            conformance!(@case $make, ledger_check_detects_an_expired_hold);
            conformance!(@case $make, one_process_serves_under_each_node_id);
        }
    };
    (@case $make:ident, $name:ident $(, $($runtime:tt)+)?) => {
        #[tokio::test$(($($runtime)+))?]
        async fn $name() {
            super::$name(super::$make().await).await;
        }
    };
}

conformance!(sqlite, make_sqlite_store);
conformance!(postgres, make_pg_store);
