//! SQLite schema upgrades keep every row: a database made by the first schema opens with the
//! current one, its ledger intact and its books balanced.

use chrono::Utc;
use rusqlite::{params, Connection};
use tollgate_core::money::Credits;
use tollgate_core::store::{Direction, EntryType, LedgerWrite, Store};
use tollgate_store::SqliteStore;

const FIRST_SCHEMA: &str = include_str!("../migrations/sqlite/0001_init.sql");

#[tokio::test]
async fn a_first_schema_database_upgrades_with_its_ledger_intact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).expect("open");
        c.execute_batch(FIRST_SCHEMA).expect("first schema");
        c.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0);
             INSERT INTO accounts (id, email, password_hash, balance, created_at) VALUES ('a', 'a@example.com', 'x', 700, 0);",
        )
        .expect("account");
        for (i, (dir, amount)) in [("TOPUP", 1000), ("CHARGE", 300)].iter().enumerate() {
            c.execute(
                "INSERT INTO ledger (account_id, direction, type, amount, idempotency_key, created_at) VALUES ('a', ?1, 'ADJUSTMENT', ?2, ?3, 0)",
                params![dir, amount, format!("old-{i}")],
            )
            .expect("ledger row");
        }
    }
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("upgrade");
    assert!(store.ledger_check(Utc::now()).await.unwrap().is_empty());
    let balance = store
        .write_ledger(LedgerWrite {
            account_id: "a".into(),
            direction: Direction::Topup,
            kind: EntryType::Adjustment,
            amount: Credits(5),
            model: None,
            reference_id: None,
            description: None,
            idempotency_key: "new-0".into(),
        })
        .await
        .expect("a new entry");
    assert_eq!(balance, Credits(705));
    drop(store);
    let c = Connection::open(&path).expect("reopen");
    let ids: Vec<(i64, String)> = c
        .prepare("SELECT id, idempotency_key FROM ledger ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ids,
        vec![
            (1, "old-0".into()),
            (2, "old-1".into()),
            (3, "new-0".into())
        ]
    );
    let sql: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'ledger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
}
