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
        let rate = i128::from(self.0.max(1));
        let c = i128::from(credits.0);
        let sign = if c < 0 { "-" } else { "" };
        let c = c.abs();
        let whole = c / rate;
        let nanos = ((c % rate) * 1_000_000_000 + rate / 2) / rate;
        let (whole, nanos) = if nanos >= 1_000_000_000 {
            (whole + 1, nanos - 1_000_000_000)
        } else {
            (whole, nanos)
        };
        if nanos == 0 {
            return format!("{sign}{whole}");
        }
        let frac = format!("{nanos:09}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }

    /// A reply's `meta` object as JSON text: `{"usage":{"credits_used":N,"usd_spent":USD}}`,
    /// with the USD figure written as its exact decimal (a JSON number as it stands).
    pub fn usage_meta(self, credits: Credits) -> String {
        format!(
            r#"{{"usage":{{"credits_used":{},"usd_spent":{}}}}}"#,
            credits.0,
            self.usd(credits)
        )
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
