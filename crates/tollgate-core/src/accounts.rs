//! Accounts and the tier derived from their billing state.

use crate::money::Credits;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The tier an account is in, derived from its billing state (never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Verified,
    Paid,
}

impl Tier {
    pub fn derive(has_billing_method: bool, has_paid: bool) -> Self {
        if has_paid {
            Self::Paid
        } else if has_billing_method {
            Self::Verified
        } else {
            Self::Free
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Verified => "verified",
            Self::Paid => "paid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub has_billing_method: bool,
    pub has_paid: bool,
    pub suspended: bool,
    /// The ledger balance.
    pub balance: Credits,
    /// What live holds reserve.
    pub held: Credits,
    pub created_at: DateTime<Utc>,
}

impl Account {
    pub fn tier(&self) -> Tier {
        Tier::derive(self.has_billing_method, self.has_paid)
    }

    pub fn available(&self) -> Credits {
        self.balance.saturating_sub(self.held)
    }
}

/// Normalises an email for storage and lookup.
pub fn normalize_email(email: &str) -> Option<String> {
    let e = email.trim().to_ascii_lowercase();
    let (local, domain) = e.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !e.contains(' '))
        .then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_follows_billing_state() {
        assert_eq!(Tier::derive(false, false), Tier::Free);
        assert_eq!(Tier::derive(true, false), Tier::Verified);
        assert_eq!(Tier::derive(true, true), Tier::Paid);
        assert_eq!(Tier::derive(false, true), Tier::Paid);
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            normalize_email(" A@Example.com ").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(normalize_email("nope"), None);
        assert_eq!(normalize_email("a@b"), None);
    }
}
