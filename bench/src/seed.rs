//! Growth data: ledger rows and API keys written straight into the SQLite file, books balanced.

use anyhow::Context;
use rusqlite::{params, Connection};
use std::path::Path;

/// Filler accounts that own the filler keys and most filler ledger rows.
const FILLER_ACCOUNTS: i64 = 1_000;

/// Adds `ledger_rows` ledger rows and `keys` API keys. Rows come in TOPUP/CHARGE pairs of the
/// same amount on the same account, so every balance still equals its ledger and
/// `tollgate ledger check` passes: one pair in ten belongs to `bench_account` (the account
/// under load), the rest to 1,000 filler accounts with a zero balance, which also own the keys.
/// Filler key prefixes start with `zz`, which real (hex) prefixes never do.
pub fn seed(db: &Path, bench_account: &str, ledger_rows: u64, keys: u64) -> anyhow::Result<()> {
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let now = chrono::Utc::now().timestamp_millis();
    let rows = (ledger_rows / 2 * 2) as i64;
    let tx = conn.transaction()?;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
         INSERT INTO accounts (id, email, password_hash, balance, created_at)
         SELECT 'acct_bench_fill_' || i, 'fill' || i || '@bench.invalid', 'x', 0, ?2 FROM n",
        params![FILLER_ACCOUNTS, now],
    )
    .context("inserting filler accounts")?;
    if rows > 0 {
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
             INSERT INTO ledger (account_id, direction, type, amount, description, idempotency_key, created_at)
             SELECT CASE WHEN (i / 2) % 10 = 0 THEN ?2 ELSE 'acct_bench_fill_' || ((i / 2) % ?3) END,
                    CASE WHEN i % 2 = 0 THEN 'TOPUP' ELSE 'CHARGE' END,
                    'ADJUSTMENT', 1 + (i / 2) % 997, 'bench growth filler',
                    'bench-fill:' || i, ?4 - (?1 - i)
             FROM n",
            params![rows, bench_account, FILLER_ACCOUNTS, now],
        )
        .context("inserting ledger rows")?;
    }
    if keys > 0 {
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
             INSERT INTO api_keys (id, account_id, prefix, hash, name, kind, created_at)
             SELECT 'key_bench_fill_' || i, 'acct_bench_fill_' || (i % ?2), printf('zz%06d', i),
                    printf('bench-fill-hash-%08d', i), 'filler', 'regular', ?3
             FROM n",
            params![keys as i64, FILLER_ACCOUNTS, now],
        )
        .context("inserting API keys")?;
    }
    tx.commit()?;
    Ok(())
}

/// The single integer that `sql` selects.
pub fn count(db: &Path, sql: &str) -> anyhow::Result<i64> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}
