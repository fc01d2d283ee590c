//! Usage rows on SQLite: a batch's settlements write theirs together, several rows to an
//! INSERT, in the batch's transaction.

use super::db;
use crate::rows::millis;
use rusqlite::Connection;
use tollgate_core::store::StoreError;
use tollgate_core::usage::{ChargeCap, UsageRecord};

/// Rows per INSERT statement: one statement for several rows costs less per row.
const ROWS_PER_INSERT: usize = 8;
const COLUMNS: &str = "inference_id, request_id, client_request_id, account_id, key_id, model, provider, status, origin,
    error_code, prompt_tokens, completion_tokens, cached_tokens, credits, charge_capped, stream, duration_ms, ttft_ms, created_at";

/// A settlement's usage row and what it charged.
pub(crate) struct UsageRow {
    pub row: UsageRecord,
    pub credits: i64,
    pub capped: Option<ChargeCap>,
}

/// The INSERT statement for `n` (1 to [`ROWS_PER_INSERT`]) rows.
fn sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (1..=ROWS_PER_INSERT)
            .map(|n| {
                let tuples = vec!["(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"; n].join(",");
                format!("INSERT INTO usage_logs ({COLUMNS}) VALUES {tuples} ON CONFLICT (inference_id) DO NOTHING")
            })
            .collect()
    });
    &all[n.clamp(1, ROWS_PER_INSERT) - 1]
}

/// Writes `rows`, several to a statement.
pub(crate) fn insert(conn: &Connection, rows: &[UsageRow]) -> Result<(), StoreError> {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for group in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = conn.prepare_cached(sql(group.len())).map_err(db)?;
        let mut at = 1;
        for UsageRow {
            row: r,
            credits,
            capped,
        } in group
        {
            let values: [&dyn rusqlite::ToSql; 19] = [
                &r.inference_id,
                &r.request_id,
                &r.client_request_id,
                &r.account_id,
                &r.key_id,
                &r.model,
                &r.provider,
                &r.status.as_str(),
                &r.origin,
                &r.error_code,
                &int(r.prompt_tokens),
                &int(r.completion_tokens),
                &int(r.cached_tokens),
                credits,
                &capped.map(ChargeCap::as_str),
                &r.stream,
                &int(r.duration_ms),
                &r.ttft_ms.map(int),
                &millis(r.created_at),
            ];
            for v in values {
                insert.raw_bind_parameter(at, v).map_err(db)?;
                at += 1;
            }
        }
        insert.raw_execute().map_err(db)?;
    }
    Ok(())
}
