//! Account actions shared by the CLI and the API: sign-up, keys, cards, grants, checks.

use crate::accounts::{normalize_email, Account};
use crate::audit::{self, LedgerReport};
use crate::catalog::Catalog;
use crate::keys::{self, KeyKind};
use crate::money::Credits;
use crate::payments::{PaymentError, PaymentProvider};
use crate::store::{CardOutcome, Direction, EntryType, LedgerWrite, NewKey, Store, StoreError};
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::Argon2;
use chrono::Utc;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid email address `{0}`")]
    InvalidEmail(String),
    #[error("the password must be at least 8 characters")]
    WeakPassword,
    #[error("an account with email `{0}` already exists")]
    EmailTaken(String),
    #[error("no account with email `{0}`")]
    NoSuchAccount(String),
    #[error("{0}")]
    Payment(#[from] PaymentError),
    #[error("the adjustment would take the balance below zero")]
    Insufficient,
    #[error("{0}")]
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Insufficient => Self::Insufficient,
            other => Self::Store(other),
        }
    }
}

/// A created key: the full key (shown once) and its prefix.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: String,
    pub prefix: String,
    pub id: String,
}

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    payments: Arc<dyn PaymentProvider>,
    grant: Credits,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, payments: Arc<dyn PaymentProvider>, grant: Credits) -> Self {
        Self {
            store,
            payments,
            grant,
        }
    }

    pub async fn create(&self, email: &str, password: &str) -> Result<Account, ServiceError> {
        let email =
            normalize_email(email).ok_or_else(|| ServiceError::InvalidEmail(email.to_owned()))?;
        if password.chars().count() < 8 {
            return Err(ServiceError::WeakPassword);
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| ServiceError::Store(StoreError::Database(e.to_string())))?
            .to_string();
        let id = format!("acct_{}", crate::ids::inference_id());
        match self.store.create_account(&id, &email, &hash).await {
            Err(StoreError::Conflict(_)) => Err(ServiceError::EmailTaken(email)),
            other => Ok(other?),
        }
    }

    pub async fn by_email(&self, email: &str) -> Result<Account, ServiceError> {
        let normal =
            normalize_email(email).ok_or_else(|| ServiceError::InvalidEmail(email.to_owned()))?;
        self.store
            .account_by_email(&normal)
            .await?
            .ok_or(ServiceError::NoSuchAccount(normal))
    }

    pub async fn create_key(
        &self,
        account_id: &str,
        name: &str,
        kind: KeyKind,
    ) -> Result<CreatedKey, ServiceError> {
        // A prefix collision (1 in 2^32 per pair) is retried with a fresh key.
        for _ in 0..5 {
            let secret = keys::generate();
            let id = format!("key_{}", crate::ids::inference_id());
            let new = NewKey {
                id: id.clone(),
                account_id: account_id.to_owned(),
                prefix: secret.prefix.clone(),
                hash: secret.hash,
                name: name.to_owned(),
                kind,
            };
            match self.store.create_key(new).await {
                Ok(_) => {
                    return Ok(CreatedKey {
                        key: secret.key,
                        prefix: secret.prefix,
                        id,
                    })
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Store(StoreError::Conflict("key prefix")))
    }

    /// Saves a card (no charge) and gives the one-time grant if this account and this card
    /// have never had it.
    pub async fn add_card(
        &self,
        account_id: &str,
        number: &str,
    ) -> Result<CardOutcome, ServiceError> {
        let card = self.payments.save_card(account_id, number).await?;
        Ok(self.store.add_card(account_id, card, self.grant).await?)
    }

    /// An operator's grant (positive) or deduction (negative), as an `ADJUSTMENT` entry. A
    /// deduction never takes the credits no live hold reserves below zero.
    pub async fn adjust(
        &self,
        account_id: &str,
        credits: i64,
        reason: &str,
    ) -> Result<Credits, ServiceError> {
        let (direction, amount) = if credits >= 0 {
            (Direction::Topup, credits)
        } else {
            (Direction::Charge, -credits)
        };
        Ok(self
            .store
            .write_ledger(LedgerWrite {
                account_id: account_id.to_owned(),
                direction,
                kind: EntryType::Adjustment,
                amount: Credits(amount),
                model: None,
                reference_id: None,
                description: Some(reason.to_owned()),
                idempotency_key: format!("adjust:{}", crate::ids::inference_id()),
            })
            .await?)
    }

    /// The whole ledger check, pricing usage rows with `catalog`.
    pub async fn ledger_check(&self, catalog: &Catalog) -> Result<LedgerReport, ServiceError> {
        Ok(audit::check(&*self.store, catalog, Utc::now()).await?)
    }
}
