//! The SQLite write operations, each run by the writer inside its own savepoint.

use crate::reserve::{self, KeyRoom, HOUR_MS};
use crate::rows::millis;
use rusqlite::{params, Connection, OptionalExtension};
use tollgate_core::money::Credits;
use tollgate_core::store::*;
use tollgate_core::usage::UsageRecord;

use super::db;

/// Appends a ledger entry and moves the balance. `None` when the idempotency key was used.
pub(super) fn append(
    conn: &Connection,
    e: &LedgerWrite,
    now: i64,
) -> Result<Option<Credits>, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO ledger (account_id, direction, type, amount, model, reference_id, description, idempotency_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                e.account_id,
                e.direction.as_str(),
                e.kind.as_str(),
                e.amount.0,
                e.model,
                e.reference_id,
                e.description,
                e.idempotency_key,
                now
            ])
        })
        .map_err(db)?;
    if inserted == 0 {
        return Ok(None);
    }
    let delta = match e.direction {
        Direction::Topup => e.amount.0,
        Direction::Charge => -e.amount.0,
    };
    let balance: Option<i64> = conn
        .prepare_cached(
            "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2 RETURNING balance",
        )
        .and_then(|mut s| {
            s.query_row(params![delta, e.account_id], |r| r.get(0))
                .optional()
        })
        .map_err(db)?;
    balance
        .map(|b| Some(Credits(b)))
        .ok_or(StoreError::NotFound("account"))
}

fn balance_and_held(conn: &Connection, account_id: &str) -> Result<(i64, i64), StoreError> {
    conn.prepare_cached("SELECT balance, held FROM accounts WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([account_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?
        .ok_or(StoreError::NotFound("account"))
}

pub(super) fn write_ledger(
    conn: &Connection,
    entry: &LedgerWrite,
    now: i64,
) -> Result<Credits, StoreError> {
    let (balance, held) = balance_and_held(conn, &entry.account_id)?;
    if entry.direction == Direction::Charge && balance - held < entry.amount.0 {
        // A retry of a charge that already applied reports success, not a shortfall.
        let applied: Option<i64> = conn
            .prepare_cached("SELECT id FROM ledger WHERE idempotency_key = ?1")
            .and_then(|mut s| {
                s.query_row([&entry.idempotency_key], |r| r.get(0))
                    .optional()
            })
            .map_err(db)?;
        return if applied.is_some() {
            Ok(Credits(balance))
        } else {
            Err(StoreError::Insufficient)
        };
    }
    Ok(append(conn, entry, now)?.unwrap_or(Credits(balance)))
}

pub(super) fn add_card(
    conn: &Connection,
    account_id: &str,
    card: &SavedCard,
    grant: Credits,
    now: i64,
) -> Result<CardOutcome, StoreError> {
    let granted_before: bool = conn
        .query_row(
            "SELECT bonus_granted FROM accounts WHERE id = ?1",
            [account_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?
        .ok_or(StoreError::NotFound("account"))?;
    conn.execute(
        "INSERT INTO cards (id, account_id, fingerprint, brand, last4, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![card.id, account_id, card.fingerprint, card.brand, card.last4, now],
    )
    .map_err(db)?;
    conn.execute(
        "UPDATE accounts SET has_billing_method = TRUE WHERE id = ?1",
        [account_id],
    )
    .map_err(db)?;
    let mut granted = false;
    if !granted_before && grant > Credits::ZERO {
        let fresh_card = conn
            .execute(
                "INSERT INTO card_grants (fingerprint, account_id, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (fingerprint) DO NOTHING",
                params![card.fingerprint, account_id, now],
            )
            .map_err(db)?
            == 1;
        if fresh_card {
            let entry = LedgerWrite::billing_method_grant(account_id, card, grant);
            granted = append(conn, &entry, now)?.is_some();
            conn.execute(
                "UPDATE accounts SET bonus_granted = TRUE WHERE id = ?1",
                [account_id],
            )
            .map_err(db)?;
        }
    }
    let (balance, _) = balance_and_held(conn, account_id)?;
    Ok(CardOutcome {
        granted,
        balance: Credits(balance),
    })
}

pub(super) fn hold(conn: &Connection, req: &HoldRequest) -> Result<Hold, HoldError> {
    let now = millis(req.now);
    let (balance, held) = balance_and_held(conn, &req.account_id)?;
    if let Some(check) = req.free_tier {
        let in_flight: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM holds WHERE account_id = ?1 AND lease_until > ?2")
            .and_then(|mut s| s.query_row(params![req.account_id, now], |r| r.get(0)))
            .map_err(db)?;
        let window = now - HOUR_MS;
        let (recent, oldest): (i64, Option<i64>) = conn
            .prepare_cached(
                "SELECT COUNT(*), MIN(at) FROM free_requests WHERE account_id = ?1 AND at > ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![req.account_id, window], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .map_err(db)?;
        reserve::free_tier(check, in_flight, recent, oldest, now)?;
        conn.prepare_cached("DELETE FROM free_requests WHERE account_id = ?1 AND at <= ?2")
            .and_then(|mut s| s.execute(params![req.account_id, window]))
            .map_err(db)?;
        conn.prepare_cached("INSERT INTO free_requests (account_id, at) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![req.account_id, now]))
            .map_err(db)?;
    }
    let key = match req.key_limit {
        None => None,
        Some((limit, start)) => {
            let (period, spent, key_held): (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT limit_period_start, limit_spent, held FROM api_keys WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&req.key_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                })
                .map_err(db)?;
            let spent = if period == millis(start) { spent } else { 0 };
            Some(KeyRoom {
                threshold: limit.threshold.0,
                spent,
                held: key_held,
            })
        }
    };
    let amount = reserve::amount(balance, held, key, req.min, req.max)?;
    if let Some((_, start)) = req.key_limit {
        conn.prepare_cached(
            "UPDATE api_keys SET held = held + ?1, limit_spent = CASE WHEN limit_period_start = ?2 THEN limit_spent ELSE 0 END, limit_period_start = ?2 WHERE id = ?3",
        )
        .and_then(|mut s| s.execute(params![amount, millis(start), req.key_id]))
        .map_err(db)?;
    }
    if amount > 0 {
        conn.prepare_cached("UPDATE accounts SET held = held + ?1 WHERE id = ?2")
            .and_then(|mut s| s.execute(params![amount, req.account_id]))
            .map_err(db)?;
    }
    conn.prepare_cached(
        "INSERT INTO holds (id, account_id, key_id, key_limited, node_id, amount, created_at, lease_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            req.id,
            req.account_id,
            req.key_id,
            req.key_limit.is_some(),
            req.node_id,
            amount,
            now,
            millis(req.lease_until)
        ])
    })
    .map_err(db)?;
    Ok(Hold {
        amount: Credits(amount),
    })
}

pub(super) fn settle(conn: &Connection, s: &Settlement, now: i64) -> Result<Settled, StoreError> {
    let hold: Option<(String, bool, i64)> = conn
        .prepare_cached("DELETE FROM holds WHERE id = ?1 RETURNING key_id, key_limited, amount")
        .and_then(|mut st| {
            st.query_row([&s.hold_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db)?;
    let Some((key_id, key_limited, amount)) = hold else {
        let done: Option<i64> = conn
            .prepare_cached("SELECT id FROM ledger WHERE idempotency_key = ?1")
            .and_then(|mut st| {
                st.query_row([format!("usage:{}", s.hold_id)], |r| r.get(0))
                    .optional()
            })
            .map_err(db)?;
        return Ok(if done.is_some() {
            Settled::AlreadySettled
        } else {
            Settled::HoldGone
        });
    };
    let (balance, held) = balance_and_held(conn, &s.account_id)?;
    let charge = reserve::charge(s.charge, balance, held, amount);
    if amount > 0 {
        conn.prepare_cached("UPDATE accounts SET held = held - ?1 WHERE id = ?2")
            .and_then(|mut st| st.execute(params![amount, s.account_id]))
            .map_err(db)?;
    }
    if key_limited {
        let start = s.key_period_start.map(millis).unwrap_or(0);
        conn.prepare_cached(
            "UPDATE api_keys SET held = held - ?1, limit_spent = CASE WHEN limit_period_start = ?2 THEN limit_spent + ?3 ELSE ?3 END, limit_period_start = ?2 WHERE id = ?4",
        )
        .and_then(|mut st| st.execute(params![amount, start, charge, key_id]))
        .map_err(db)?;
    }
    if charge > 0 {
        let entry = LedgerWrite::model_usage(s, Credits(charge));
        if append(conn, &entry, now)?.is_none() {
            // Rolls this job back to its savepoint: the hold stays as it was.
            return Err(StoreError::Conflict("idempotency key"));
        }
    }
    Ok(Settled::Charged(Credits(charge)))
}

/// Releases the holds matching `filter` (a condition on `h` with `?1` bound to `arg`).
pub(super) fn release_where(
    conn: &Connection,
    filter: &str,
    arg: &dyn rusqlite::ToSql,
) -> Result<u64, StoreError> {
    conn.execute(
        &format!(
            "UPDATE accounts SET held = held - (SELECT COALESCE(SUM(h.amount), 0) FROM holds h WHERE h.account_id = accounts.id AND {filter})
             WHERE id IN (SELECT h.account_id FROM holds h WHERE {filter})"
        ),
        [arg],
    )
    .map_err(db)?;
    conn.execute(
        &format!(
            "UPDATE api_keys SET held = held - (SELECT COALESCE(SUM(h.amount), 0) FROM holds h WHERE h.key_id = api_keys.id AND h.key_limited AND {filter})
             WHERE id IN (SELECT h.key_id FROM holds h WHERE h.key_limited AND {filter})"
        ),
        [arg],
    )
    .map_err(db)?;
    let n = conn
        .execute(
            &format!("DELETE FROM holds WHERE id IN (SELECT h.id FROM holds h WHERE {filter})"),
            [arg],
        )
        .map_err(db)?;
    Ok(n as u64)
}

pub(super) fn record_usage(conn: &Connection, rows: &[UsageRecord]) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO usage_logs (inference_id, request_id, client_request_id, account_id, key_id, model, status, origin, error_code,
                prompt_tokens, completion_tokens, cached_tokens, credits, stream, duration_ms, ttft_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (inference_id) DO NOTHING",
        )
        .map_err(db)?;
    let mut touch = conn
        .prepare_cached("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)")
        .map_err(db)?;
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for r in rows {
        insert
            .execute(params![
                r.inference_id,
                r.request_id,
                r.client_request_id,
                r.account_id,
                r.key_id,
                r.model,
                r.status.as_str(),
                r.origin,
                r.error_code,
                int(r.prompt_tokens),
                int(r.completion_tokens),
                int(r.cached_tokens),
                r.credits.0,
                r.stream,
                int(r.duration_ms),
                r.ttft_ms.map(int),
                millis(r.created_at)
            ])
            .map_err(db)?;
        touch
            .execute(params![millis(r.created_at), r.key_id])
            .map_err(db)?;
    }
    Ok(())
}
