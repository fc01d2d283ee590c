//! API keys: generation, hashing, kinds, scopes and spending limits.

use crate::money::Credits;
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A freshly generated key: shown once, stored only as its hash.
#[derive(Debug, Clone)]
pub struct NewKeySecret {
    pub key: String,
    pub prefix: String,
    pub hash: String,
}

/// 32 lowercase hex characters from the OS RNG (128 bits); the prefix is the first 8.
pub fn generate() -> NewKeySecret {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    NewKeySecret {
        prefix: key[..8].to_owned(),
        hash: hash(&key),
        key,
    }
}

/// The stored form of a key. Keys carry 128 random bits, so a fast hash is safe here.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Regular,
    Management,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::Management => "management",
        }
    }
}

pub const SCOPES: &[&str] = &[
    "model:chat",
    "model:responses",
    "model:image",
    "model:audio",
    "model:video",
    "model:embeddings",
    "model:speech",
    "model:ocr",
];

/// How often a key's spending limit resets (at 00:00 UTC; weeks start on Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    NoReset,
    Day,
    Week,
    Month,
}

impl Retention {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "no_reset" => Self::NoReset,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoReset => "no_reset",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// Start of the period containing `now` (the epoch for `no_reset`).
    pub fn period_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let day = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()
            .unwrap_or(now);
        match self {
            Self::NoReset => DateTime::<Utc>::UNIX_EPOCH,
            Self::Day => day,
            Self::Week => day - Duration::days(i64::from(now.weekday().num_days_from_monday())),
            Self::Month => Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or(day),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendLimit {
    pub retention: Retention,
    pub threshold: Credits,
}

/// A key as the request path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub account_id: String,
    pub prefix: String,
    pub name: String,
    pub kind: KeyKind,
    pub disabled: bool,
    /// `None` means every scope.
    pub scopes: Option<Vec<String>>,
    pub limit: Option<SpendLimit>,
}

impl ApiKey {
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_hex_with_an_8_char_prefix_and_hash_only() {
        let k = generate();
        assert_eq!(k.key.len(), 32);
        assert!(k
            .key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(k.prefix, &k.key[..8]);
        assert_eq!(k.hash, hash(&k.key));
        assert_ne!(k.hash, k.key);
        assert_ne!(generate().key, k.key);
    }

    #[test]
    fn periods_start_at_utc_midnight_monday_and_the_first() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 14, 3, 9).unwrap(); // a Wednesday
        assert_eq!(
            Retention::Day.period_start(now),
            Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Retention::Week.period_start(now),
            Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Retention::Month.period_start(now),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Retention::NoReset.period_start(now),
            DateTime::<Utc>::UNIX_EPOCH
        );
    }
}
