//! Conversions between stored values and domain values, shared by both backends.

use chrono::{DateTime, TimeZone, Utc};
use tollgate_core::keys::{KeyKind, Retention, SpendLimit};
use tollgate_core::money::Credits;

pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(crate) fn kind(s: &str) -> KeyKind {
    if s == "management" {
        KeyKind::Management
    } else {
        KeyKind::Regular
    }
}

pub(crate) fn scopes(s: Option<String>) -> Option<Vec<String>> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

pub(crate) fn limit(retention: Option<String>, threshold: Option<i64>) -> Option<SpendLimit> {
    Some(SpendLimit {
        retention: Retention::parse(retention.as_deref()?)?,
        threshold: Credits(threshold?),
    })
}

/// Which uniqueness rule a database's unique-violation message names.
pub(crate) fn unique_subject(msg: &str) -> &'static str {
    if msg.contains("email") {
        "email"
    } else if msg.contains("prefix") || msg.contains("hash") {
        "key prefix"
    } else if msg.contains("idempotency") {
        "idempotency key"
    } else {
        "unique value"
    }
}

/// Every account with its ledger sum, live holds and expired holds (`$1`/`?1` = now, ms).
pub(crate) const LEDGER_CHECK_SQL: &str = "SELECT a.id, a.email, a.balance, a.held,
    CAST(COALESCE((SELECT SUM(CASE WHEN l.direction = 'TOPUP' THEN l.amount ELSE -l.amount END) FROM ledger l WHERE l.account_id = a.id), 0) AS BIGINT) AS ledger_sum,
    CAST(COALESCE((SELECT SUM(h.amount) FROM holds h WHERE h.account_id = a.id), 0) AS BIGINT) AS holds_sum,
    (SELECT COUNT(*) FROM holds h WHERE h.account_id = a.id AND h.lease_until < $1) AS expired
 FROM accounts a ORDER BY a.email";

/// Usage rows after `$1` in inference-id order (at most `$2`), each with the ledger's
/// `MODEL_USAGE` amount for it (0 when there is none).
pub(crate) const CHARGED_ROWS_SQL: &str = "SELECT u.inference_id, u.model, u.status, u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.credits, u.charge_capped,
    CAST(COALESCE((SELECT l.amount FROM ledger l WHERE l.idempotency_key = 'usage:' || u.inference_id), 0) AS BIGINT) AS ledger
 FROM usage_logs u WHERE u.inference_id > $1 ORDER BY u.inference_id LIMIT $2";

/// `MODEL_USAGE` entries without a usage row (at most `$1`).
pub(crate) const CHARGES_WITHOUT_ROW_SQL: &str = "SELECT COALESCE(l.reference_id, l.idempotency_key) FROM ledger l
 WHERE l.type = 'MODEL_USAGE' AND NOT EXISTS (SELECT 1 FROM usage_logs u WHERE u.inference_id = l.reference_id)
 ORDER BY l.id LIMIT $1";
