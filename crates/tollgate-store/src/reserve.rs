//! The arithmetic of holds and settlements, shared by both backends so they cannot drift.

use tollgate_core::money::Credits;
use tollgate_core::store::{FreeTierCheck, HoldError};

/// One hour, in milliseconds: the free tier's rolling window.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// Free-tier admission from the live holds and the requests in the last hour.
pub(crate) fn free_tier(
    check: FreeTierCheck,
    in_flight: i64,
    recent: i64,
    oldest: Option<i64>,
    now: i64,
) -> Result<(), HoldError> {
    if in_flight >= i64::from(check.max_in_flight) {
        return Err(HoldError::FreeInFlight);
    }
    if recent >= i64::from(check.hourly_limit) {
        let retry_ms = oldest.unwrap_or(now) + HOUR_MS - now;
        return Err(HoldError::FreeHourly {
            retry_after_secs: u64::try_from(retry_ms.max(1_000) / 1_000).unwrap_or(1),
        });
    }
    Ok(())
}

/// The key's current period and what was spent in it, from the stored period and the one the
/// request's clock names: the later wins, so a node whose clock is behind never takes the
/// period back (and never resets the spending of the period the database has moved to).
pub(crate) fn key_period(stored_start: i64, stored_spent: i64, clock_start: i64) -> (i64, i64) {
    if stored_start >= clock_start {
        (stored_start, stored_spent)
    } else {
        (clock_start, 0)
    }
}

/// The key's stored `(period, spent)` after a charge that counts in `hold_period`: a later
/// period starts over with the charge; the stored period adds it; an earlier period (the
/// charge of a request held before the period turned) is over and is left as it is.
pub(crate) fn key_spend_after(
    stored_start: i64,
    stored_spent: i64,
    hold_period: i64,
    charge: i64,
) -> (i64, i64) {
    match hold_period.cmp(&stored_start) {
        std::cmp::Ordering::Greater => (hold_period, charge),
        std::cmp::Ordering::Equal => (stored_start, stored_spent + charge),
        std::cmp::Ordering::Less => (stored_start, stored_spent),
    }
}

/// A key's limit state in its current period.
pub(crate) struct KeyRoom {
    pub threshold: i64,
    /// Spent in the current period (0 when the stored period is an earlier one).
    pub spent: i64,
    pub held: i64,
}

/// How much to reserve: up to `max`, at least `min`, within the account's available credits
/// and the key's remaining limit.
pub(crate) fn amount(
    balance: i64,
    held: i64,
    key: Option<KeyRoom>,
    min: Credits,
    max: Credits,
) -> Result<i64, HoldError> {
    let available = balance - held;
    let mut reserve = max.0.min(available);
    if let Some(k) = key {
        let room = k.threshold - k.spent - k.held;
        if room < min.0 {
            return Err(HoldError::KeyLimit);
        }
        reserve = reserve.min(room);
    }
    if available < min.0 {
        return Err(HoldError::Credits {
            available: Credits(available),
            needed: min,
        });
    }
    Ok(reserve.max(0))
}

/// What settlement actually charges: the requested charge, never taking the balance below
/// what the account's other holds need. A settlement whose hold is gone passes
/// `hold_amount` 0: it takes only credits no live hold reserves.
pub(crate) fn charge(requested: Credits, balance: i64, held: i64, hold_amount: i64) -> i64 {
    requested
        .0
        .clamp(0, (balance - (held - hold_amount)).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_within_account_and_key() {
        assert_eq!(
            amount(1000, 0, None, Credits(10), Credits(300)).unwrap(),
            300
        );
        assert_eq!(
            amount(1000, 900, None, Credits(10), Credits(300)).unwrap(),
            100
        );
        assert!(matches!(
            amount(1000, 995, None, Credits(10), Credits(300)),
            Err(HoldError::Credits { .. })
        ));
        let key = KeyRoom {
            threshold: 500,
            spent: 300,
            held: 100,
        };
        assert_eq!(
            amount(1000, 0, Some(key), Credits(10), Credits(300)).unwrap(),
            100
        );
        let key = KeyRoom {
            threshold: 500,
            spent: 495,
            held: 0,
        };
        assert!(matches!(
            amount(1000, 0, Some(key), Credits(10), Credits(300)),
            Err(HoldError::KeyLimit)
        ));
    }

    #[test]
    fn charges_never_overdraw() {
        assert_eq!(charge(Credits(50), 1000, 300, 300), 50);
        assert_eq!(charge(Credits(5000), 1000, 300, 300), 1000);
        assert_eq!(charge(Credits(5000), 1000, 500, 300), 800);
        assert_eq!(charge(Credits(-5), 1000, 0, 0), 0);
    }

    #[test]
    fn key_periods_never_move_backwards() {
        // The clock names a later period: it starts empty.
        assert_eq!(key_period(100, 70, 200), (200, 0));
        // The same period, or a clock behind the stored one: the stored spending counts.
        assert_eq!(key_period(200, 70, 200), (200, 70));
        assert_eq!(key_period(200, 70, 100), (200, 70));
        // Settling into a later, the same, and an earlier period.
        assert_eq!(key_spend_after(100, 70, 200, 5), (200, 5));
        assert_eq!(key_spend_after(200, 70, 200, 5), (200, 75));
        assert_eq!(key_spend_after(200, 70, 100, 5), (200, 70));
    }

    #[test]
    fn free_tier_rules() {
        let check = FreeTierCheck {
            hourly_limit: 3,
            max_in_flight: 1,
        };
        assert!(free_tier(check, 0, 2, Some(0), 10).is_ok());
        assert!(matches!(
            free_tier(check, 1, 0, None, 10),
            Err(HoldError::FreeInFlight)
        ));
        match free_tier(check, 0, 3, Some(1_000), 1_000 + HOUR_MS - 5_000) {
            Err(HoldError::FreeHourly { retry_after_secs }) => assert_eq!(retry_after_secs, 5),
            other => panic!("{other:?}"),
        }
    }
}
