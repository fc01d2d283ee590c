//! The SQLite write operations, each run by the writer inside its own savepoint.

use crate::reserve::{self, KeyRoom, HOUR_MS};
use crate::rows::{millis, time};
use rusqlite::{params, Connection, OptionalExtension};
use tollgate_core::money::Credits;
use tollgate_core::store::*;

use super::book::{Book, LiveHold};
use super::combiner::Batch;
use super::db;

/// Inserts a ledger entry; `false` when its idempotency key was already used.
fn insert_entry(conn: &Connection, e: &LedgerWrite, now: i64) -> Result<bool, StoreError> {
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
    Ok(inserted == 1)
}

/// Appends a ledger entry and moves the balance. `None` when the idempotency key was used.
pub(super) fn append(
    conn: &Connection,
    e: &LedgerWrite,
    now: i64,
) -> Result<Option<Credits>, StoreError> {
    if !insert_entry(conn, e, now)? {
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

/// Appends an operator or payment entry, refusing a charge the available balance (after
/// the book's live holds) cannot cover; the book learns the new balance.
pub(super) fn write_ledger(
    b: &mut Batch<'_>,
    entry: &LedgerWrite,
    now: i64,
) -> Result<Credits, StoreError> {
    // The book stays locked from the read of live holds to the new balance: a hold placed
    // from the cache in between would count a balance this charge is taking.
    b.begin()?;
    let mut book = b.book();
    let live = book.held(&entry.account_id);
    let balance = b.write(|conn| {
        let (balance, held) = balance_and_held(conn, &entry.account_id)?;
        if entry.direction == Direction::Charge && balance - held - live < entry.amount.0 {
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
    })?;
    book.set_balance(&entry.account_id, balance.0);
    Ok(balance)
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

/// The committed balance, from the book or (read once) from the database.
fn balance(b: &mut Batch<'_>, book: &mut Book, account_id: &str) -> Result<i64, StoreError> {
    if let Some(balance) = book.balance(account_id) {
        return Ok(balance);
    }
    Ok(committed(b, book, account_id)?.0)
}

/// The committed `(balance, accounts.held)`, from the book or (read once) from the database.
fn committed(
    b: &mut Batch<'_>,
    book: &mut Book,
    account_id: &str,
) -> Result<(i64, i64), StoreError> {
    if let Some(figures) = book.committed(account_id) {
        return Ok(figures);
    }
    let (balance, held) = balance_and_held(b.conn(), account_id)?;
    book.set_committed(account_id, balance, held);
    Ok((balance, held))
}

/// The key's committed `(limit_period_start, limit_spent)`, from the book or the database.
fn key_spent(b: &mut Batch<'_>, book: &mut Book, key_id: &str) -> Result<(i64, i64), StoreError> {
    if let Some(spent) = book.key_spent(key_id) {
        return Ok(spent);
    }
    let spent: (i64, i64) = b
        .conn()
        .prepare_cached("SELECT limit_period_start, limit_spent FROM api_keys WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([key_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?
        .ok_or(StoreError::NotFound("key"))?;
    book.set_key_spent(key_id, spent.0, spent.1);
    Ok(spent)
}

/// Places a hold in the book, reading the figures it needs that are not cached. Only the
/// free tier's hourly counter writes to the database.
pub(super) fn hold(b: &mut Batch<'_>, req: &HoldRequest) -> Result<Hold, HoldError> {
    let now = millis(req.now);
    if req.free_tier.is_some() {
        b.begin()?;
    }
    let mut book = b.book();
    let balance = balance(b, &mut book, &req.account_id)?;
    if let Some(check) = req.free_tier {
        let in_flight = book.in_flight(&req.account_id, now);
        b.write(|conn| free_request(conn, check, &req.account_id, in_flight, now))?;
    }
    let key_spent = match req.key_limit {
        None => None,
        Some(_) => Some(key_spent(b, &mut book, &req.key_id)?),
    };
    reserve_in_book(&mut book, req, balance, key_spent)
}

/// Places a paid hold from the book alone, when every figure it needs is cached: `None`
/// sends it to the write path ([`hold`]). A hold placed here sees the committed figures as
/// of the write path's last look at outside commits, as every hold does.
pub(super) fn hold_from_cache(
    book: &mut Book,
    req: &HoldRequest,
) -> Option<Result<Hold, HoldError>> {
    if req.free_tier.is_some() {
        return None;
    }
    let balance = book.balance(&req.account_id)?;
    let key_spent = match req.key_limit {
        None => None,
        Some(_) => Some(book.key_spent(&req.key_id)?),
    };
    Some(reserve_in_book(book, req, balance, key_spent))
}

/// Reserves what the account (and the key's limit, with its committed `(period, spent)`)
/// can cover, and records the hold.
fn reserve_in_book(
    book: &mut Book,
    req: &HoldRequest,
    balance: i64,
    key_spent: Option<(i64, i64)>,
) -> Result<Hold, HoldError> {
    let held = book.held(&req.account_id);
    let (key, key_period) = match (req.key_limit, key_spent) {
        (Some((limit, start)), Some((stored, spent))) => {
            let (period, spent) = reserve::key_period(stored, spent, millis(start));
            let room = KeyRoom {
                threshold: limit.threshold.0,
                spent,
                held: book.key_held(&req.key_id),
            };
            (Some(room), Some(period))
        }
        _ => (None, None),
    };
    let amount = reserve::amount(balance, held, key, req.min, req.max)?;
    if book.contains(&req.id) {
        return Err(StoreError::Conflict("hold id").into());
    }
    book.insert(
        req.id.clone(),
        LiveHold {
            account_id: req.account_id.clone(),
            key_id: req.key_id.clone(),
            key_limited: req.key_limit.is_some(),
            node_id: req.node_id.clone(),
            amount,
            lease_until: millis(req.lease_until),
            settling: None,
        },
    );
    Ok(Hold {
        amount: Credits(amount),
        key_period: key_period.map(time),
    })
}

/// Admits one free-tier request against the rolling hour and counts it.
fn free_request(
    conn: &Connection,
    check: FreeTierCheck,
    account_id: &str,
    in_flight: i64,
    now: i64,
) -> Result<(), HoldError> {
    let window = now - HOUR_MS;
    let (recent, oldest): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT COUNT(*), MIN(at) FROM free_requests WHERE account_id = ?1 AND at > ?2",
        )
        .and_then(|mut s| s.query_row(params![account_id, window], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(db)?;
    reserve::free_tier(check, in_flight, recent, oldest, now)?;
    conn.prepare_cached("DELETE FROM free_requests WHERE account_id = ?1 AND at <= ?2")
        .and_then(|mut s| s.execute(params![account_id, window]))
        .map_err(db)?;
    conn.prepare_cached("INSERT INTO free_requests (account_id, at) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![account_id, now]))
        .map_err(db)?;
    Ok(())
}

/// Charges a settlement, writes its usage row and releases its hold, in the batch's write
/// transaction: the book gives the hold back once the batch has committed (until then it
/// stays reserved, so a failed commit loses nothing and the retry finds it). The balance is
/// written once per batch (see [`Batch::defer_balance`]), and the batch's usage rows
/// together ([`Batch::write_usage`]).
pub(super) fn settle(b: &mut Batch<'_>, s: Settlement, now: i64) -> Result<Settled, StoreError> {
    // Inside the write transaction the book's committed balance is exact: an operator's
    // deduction made a moment ago by another process counts here. The book stays locked
    // until the hold is marked and the new balance is in: a hold placed from the cache sees
    // both or neither (the commit itself runs without the lock).
    b.begin()?;
    let mut book = b.book();
    let live = book.hold(s.hold_id()).map(|h| {
        let key = h.key_limited.then(|| h.key_id.clone());
        (h.amount, key, h.settling)
    });
    let held_live = live.is_some();
    let (hold_amount, limited_key) = match live {
        // Another settlement of this hold is in this batch.
        Some((_, _, Some(charged))) => return Ok(Settled::AlreadySettled(Credits(charged))),
        Some((amount, key, None)) => (amount, key),
        None => {
            // Settled before (a retry whose first try committed), or the hold is gone.
            if let Some(charged) = settled_charge(b.conn(), s.hold_id())? {
                return Ok(Settled::AlreadySettled(Credits(charged)));
            }
            let key = s.key_period_start.map(|_| s.row.key_id.clone());
            (0, key)
        }
    };
    let account = s.account_id();
    let (balance, stored_held) = committed(b, &mut book, account)?;
    let held = book.held(account) + stored_held;
    let charge = reserve::charge(s.charge, balance, held, hold_amount);
    let spent = match &limited_key {
        Some(key_id) => {
            let (stored_period, spent) = key_spent(b, &mut book, key_id)?;
            let period = s.key_period_start.map_or(0, millis);
            Some(reserve::key_spend_after(
                stored_period,
                spent,
                period,
                charge,
            ))
        }
        None => None,
    };
    if charge > 0 {
        let entry = LedgerWrite::model_usage(&s, Credits(charge));
        if !b.write_all_or_nothing(|conn| insert_entry(conn, &entry, now))? {
            // The usage charge is already in the ledger (written before usage rows were).
            if held_live {
                b.remove_hold_on_commit(s.hold_id());
            }
            return Ok(Settled::AlreadySettled(Credits(charge)));
        }
    }
    let capped = s.cap_for(charge);
    if let (Some(key_id), Some((period, spent))) = (&limited_key, spent) {
        b.write_all_or_nothing(|conn| {
            conn.prepare_cached(
                "UPDATE api_keys SET limit_spent = ?1, limit_period_start = ?2 WHERE id = ?3",
            )
            .and_then(|mut st| st.execute(params![spent, period, key_id]))
            .map(drop)
            .map_err(db)
        })?;
        book.set_key_spent(key_id, period, spent);
    }
    if charge > 0 {
        book.set_balance(account, balance - charge);
        b.defer_balance(account, balance - charge);
    }
    if held_live {
        book.begin_settling(s.hold_id(), charge);
        b.remove_hold_on_commit(s.hold_id());
    }
    drop(book);
    b.write_usage(s.row, charge, capped);
    Ok(if held_live {
        Settled::Charged(Credits(charge))
    } else {
        Settled::ChargedWithoutHold(Credits(charge))
    })
}

/// What an earlier settlement of `inference_id` charged, if one committed.
fn settled_charge(conn: &Connection, inference_id: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT credits FROM usage_logs WHERE inference_id = ?1")
        .and_then(|mut st| st.query_row([inference_id], |r| r.get(0)).optional())
        .map_err(db)
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
