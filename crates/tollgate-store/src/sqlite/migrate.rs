//! Applies the SQLite migrations compiled into the binary, once each, in order.

use rusqlite::Connection;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_ledger_rowid.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_usage_charge.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_usage_without_rowid.sql"),
    ),
];

pub(super) fn run(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        let step = (|| {
            if !applied {
                conn.execute_batch(sql)?;
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    rusqlite::params![version, chrono::Utc::now().timestamp_millis()],
                )?;
            }
            Ok(())
        })();
        match step {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
}
