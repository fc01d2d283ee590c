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

    /// `credits` in USD as a JSON number (from the exact decimal string).
    pub fn usd_json(self, credits: Credits) -> serde_json::Value {
        let s = self.usd(credits);
        if let Ok(whole) = s.parse::<i64>() {
            return serde_json::Value::from(whole);
        }
        s.parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::String(s))
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
}
