//! Usage rows on PostgreSQL: the row a settlement writes, and the rows the ledger check
//! audits.

use super::{db, Tx};
use crate::rows::{millis, CHARGED_ROWS_SQL, CHARGES_WITHOUT_ROW_SQL};
use sqlx::{PgPool, Row};
use tollgate_core::money::Credits;
use tollgate_core::store::{ChargedRow, StoreError};
use tollgate_core::usage::{ChargeCap, UsageRecord};

/// Writes a settlement's usage row with what it charged inside `tx`; `false` when the row
/// already exists.
pub(super) async fn insert_usage(
    tx: &mut Tx,
    r: &UsageRecord,
    credits: i64,
    capped: Option<ChargeCap>,
) -> Result<bool, StoreError> {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let inserted = sqlx::query(
        "INSERT INTO usage_logs (inference_id, request_id, client_request_id, account_id, key_id, model, provider, status, origin, error_code,
            prompt_tokens, completion_tokens, cached_tokens, credits, charge_capped, stream, duration_ms, ttft_ms, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (inference_id) DO NOTHING",
    )
    .bind(&r.inference_id)
    .bind(&r.request_id)
    .bind(&r.client_request_id)
    .bind(&r.account_id)
    .bind(&r.key_id)
    .bind(&r.model)
    .bind(&r.provider)
    .bind(r.status.as_str())
    .bind(r.origin)
    .bind(r.error_code)
    .bind(int(r.prompt_tokens))
    .bind(int(r.completion_tokens))
    .bind(int(r.cached_tokens))
    .bind(credits)
    .bind(capped.map(ChargeCap::as_str))
    .bind(r.stream)
    .bind(int(r.duration_ms))
    .bind(r.ttft_ms.map(int))
    .bind(millis(r.created_at))
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(inserted == 1)
}

/// Up to `limit` usage rows after `after`, each with its `MODEL_USAGE` amount.
pub(super) async fn charged_rows(
    pool: &PgPool,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<ChargedRow>, StoreError> {
    let rows = sqlx::query(CHARGED_ROWS_SQL)
        .bind(after.unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let int = |c: &str| {
                r.try_get::<i64, _>(c)
                    .map(|v| u64::try_from(v).unwrap_or(0))
            };
            Ok(ChargedRow {
                inference_id: r.try_get("inference_id")?,
                model: r.try_get("model")?,
                succeeded: r.try_get::<String, _>("status")? == "succeeded",
                prompt_tokens: int("prompt_tokens")?,
                completion_tokens: int("completion_tokens")?,
                cached_tokens: int("cached_tokens")?,
                credits: Credits(r.try_get("credits")?),
                capped: r
                    .try_get::<Option<String>, _>("charge_capped")?
                    .as_deref()
                    .and_then(ChargeCap::parse),
                ledger: Credits(r.try_get("ledger")?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db)
}

/// `MODEL_USAGE` entries without a usage row (at most `limit`).
pub(super) async fn charges_without_row(
    pool: &PgPool,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(CHARGES_WITHOUT_ROW_SQL)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(db)
}
