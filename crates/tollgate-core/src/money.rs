//! Integer credits, the USD rate, and exact USD figures for display.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount of credits. All money inside tollgate is this integer; never a float.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Credits(pub i64);

impl Credits {
    pub const ZERO: Self = Self(0);

    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
    pub fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Credits per US dollar (default 2,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditRate(pub i64);

impl Default for CreditRate {
    fn default() -> Self {
        Self(2_000_000)
    }
}

impl CreditRate {
    /// `credits` in USD as a decimal string with at most 9 decimals, trailing zeros trimmed
    /// (rounded half up at the 9th decimal when the rate does not divide exactly).
    pub fn usd(self, credits: Credits) -> String {
        let mut out = String::with_capacity(24);
        self.write_usd(credits, &mut out);
        out
    }

    fn write_usd(self, credits: Credits, out: &mut String) {
        const NANO: u64 = 1_000_000_000;
        let rate = self.0.max(1).unsigned_abs();
        let c = credits.0.unsigned_abs();
        let (mut whole, rest) = (c / rate, c % rate);
        // The remainder in billionths, rounded half up; in u128 only when u64 cannot hold it.
        let mut nanos = match rest.checked_mul(NANO).and_then(|n| n.checked_add(rate / 2)) {
            Some(n) => n / rate,
            None => {
                let n =
                    (u128::from(rest) * u128::from(NANO) + u128::from(rate / 2)) / u128::from(rate);
                u64::try_from(n).unwrap_or(NANO)
            }
        };
        if nanos >= NANO {
            whole += 1;
            nanos -= NANO;
        }
        if credits.0 < 0 {
            out.push('-');
        }
        out.push_str(itoa::Buffer::new().format(whole));
        if nanos > 0 {
            let mut digits = [b'0'; 9];
            for d in digits.iter_mut().rev() {
                *d = b'0' + (nanos % 10) as u8;
                nanos /= 10;
            }
            let used = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
            out.push('.');
            out.extend(digits[..used].iter().map(|&d| char::from(d)));
        }
    }

    /// A reply's `meta` object as JSON text: `{"usage":{"credits_used":N,"usd_spent":USD}}`,
    /// with the USD figure written as its exact decimal (a JSON number as it stands).
    pub fn usage_meta(self, credits: Credits) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(r#"{"usage":{"credits_used":"#);
        out.push_str(itoa::Buffer::new().format(credits.0));
        out.push_str(r#","usd_spent":"#);
        self.write_usd(credits, &mut out);
        out.push_str("}}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_exact_usd() {
        let r = CreditRate::default();
        assert_eq!(r.usd(Credits(0)), "0");
        assert_eq!(r.usd(Credits(1)), "0.0000005");
        assert_eq!(r.usd(Credits(50_000)), "0.025");
        assert_eq!(r.usd(Credits(4_000_001)), "2.0000005");
        assert_eq!(r.usd(Credits(-3)), "-0.0000015");
        assert_eq!(CreditRate(3).usd(Credits(1)), "0.333333333");
        assert_eq!(CreditRate(3).usd(Credits(2)), "0.666666667");
        assert_eq!(CreditRate(3).usd(Credits(5)), "1.666666667");
        assert_eq!(CreditRate(2_000_000_000).usd(Credits(1_999_999_999)), "1");
    }

    /// The same figure computed the plain way, in i128 and through `format!`.
    fn reference(rate: i64, credits: i64) -> String {
        let rate = i128::from(rate.max(1));
        let c = i128::from(credits);
        let sign = if c < 0 { "-" } else { "" };
        let c = c.abs();
        let (mut whole, mut nanos) = (c / rate, ((c % rate) * 1_000_000_000 + rate / 2) / rate);
        if nanos >= 1_000_000_000 {
            whole += 1;
            nanos -= 1_000_000_000;
        }
        if nanos == 0 {
            return format!("{sign}{whole}");
        }
        let frac = format!("{nanos:09}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }

    #[test]
    fn usd_agrees_with_plain_arithmetic_at_every_scale() {
        let mut state: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let edges = [0, 1, -1, 2, 999_999_999, i64::MAX, i64::MIN, i64::MIN + 1];
        let rates = [
            1,
            2,
            3,
            7,
            1_000,
            2_000_000,
            1_000_000_007,
            18_446_744_073,
            i64::MAX,
        ];
        for rate in rates {
            for c in edges {
                assert_eq!(
                    CreditRate(rate).usd(Credits(c)),
                    reference(rate, c),
                    "{rate} {c}"
                );
            }
        }
        for _ in 0..100_000 {
            let rate = (next() >> (next() % 63)) as i64;
            let c = (next() as i64) >> (next() % 64);
            assert_eq!(
                CreditRate(rate).usd(Credits(c)),
                reference(rate, c),
                "{rate} {c}"
            );
        }
    }

    #[test]
    fn usage_meta_is_json_with_the_exact_decimal() {
        let r = CreditRate::default();
        let meta = r.usage_meta(Credits(4_000_001));
        assert_eq!(
            meta,
            r#"{"usage":{"credits_used":4000001,"usd_spent":2.0000005}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(v["usage"]["credits_used"], 4_000_001);
        let zero: serde_json::Value = serde_json::from_str(&r.usage_meta(Credits(0))).unwrap();
        assert_eq!(zero["usage"]["usd_spent"], 0);
    }
}
