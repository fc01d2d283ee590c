//! Payment providers behind one trait; `sandbox` is the offline default.

use crate::store::SavedCard;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("Your card was declined ({0}).")]
    Declined(&'static str),
    #[error("The card number is invalid: {0}")]
    Invalid(&'static str),
}

#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Saves a card for later off-session use, charging nothing.
    async fn save_card(&self, account_id: &str, number: &str) -> Result<SavedCard, PaymentError>;
}

/// Offline provider with Stripe-style test cards: 4242 4242 4242 4242 and 5555 5555 5555 4444
/// succeed; 4000 0000 0000 0002 is declined; 4000 0000 0000 9995 is declined for funds.
/// A card's fingerprint is a stable hash of its number.
#[derive(Debug, Clone, Default)]
pub struct Sandbox;

fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[async_trait::async_trait]
impl PaymentProvider for Sandbox {
    async fn save_card(&self, _account_id: &str, number: &str) -> Result<SavedCard, PaymentError> {
        let clean: String = number.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if !(12..=19).contains(&clean.len()) || !clean.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PaymentError::Invalid("expected 12 to 19 digits"));
        }
        let digits: Vec<u8> = clean.bytes().map(|b| b - b'0').collect();
        if !luhn_ok(&digits) {
            return Err(PaymentError::Invalid("checksum failed"));
        }
        match clean.as_str() {
            "4000000000000002" => return Err(PaymentError::Declined("card_declined")),
            "4000000000009995" => return Err(PaymentError::Declined("insufficient_funds")),
            "4000000000000069" => return Err(PaymentError::Declined("expired_card")),
            _ => {}
        }
        let brand = match digits[0] {
            4 => "visa",
            5 => "mastercard",
            3 => "amex",
            6 => "discover",
            _ => "unknown",
        };
        let fingerprint =
            hex::encode(&Sha256::digest(format!("sandbox-card:{clean}").as_bytes())[..8]);
        Ok(SavedCard {
            id: format!("card_{}", crate::ids::inference_id()),
            fingerprint,
            brand: brand.to_owned(),
            last4: clean[clean.len() - 4..].to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_cards_behave_like_stripe_test_mode() {
        let s = Sandbox;
        let a = s.save_card("x", "4242 4242 4242 4242").await.unwrap();
        let b = s.save_card("y", "4242424242424242").await.unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!((a.brand.as_str(), a.last4.as_str()), ("visa", "4242"));
        let c = s.save_card("x", "5555555555554444").await.unwrap();
        assert_ne!(c.fingerprint, a.fingerprint);
        assert_eq!(
            s.save_card("x", "4000000000000002").await.unwrap_err(),
            PaymentError::Declined("card_declined")
        );
        assert!(matches!(
            s.save_card("x", "4242424242424241").await,
            Err(PaymentError::Invalid(_))
        ));
        assert!(matches!(
            s.save_card("x", "abc").await,
            Err(PaymentError::Invalid(_))
        ));
    }
}
