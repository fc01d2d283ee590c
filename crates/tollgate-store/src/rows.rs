//! Conversions between stored values and domain values, shared by both backends.

use chrono::{DateTime, TimeZone, Utc};
use tollgate_core::keys::{KeyKind, Retention, SpendLimit};
use tollgate_core::money::Credits;
use tollgate_core::store::StoreError;

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

pub(crate) fn db(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            let msg = d.message();
            if msg.contains("email") {
                StoreError::Conflict("email")
            } else if msg.contains("prefix") || msg.contains("hash") {
                StoreError::Conflict("key prefix")
            } else if msg.contains("idempotency") {
                StoreError::Conflict("idempotency key")
            } else {
                StoreError::Conflict("unique value")
            }
        }
        _ => StoreError::Database(e.to_string()),
    }
}
