//! A held request's bill: settles exactly once, when told or when dropped.
//!
//! Dropping an unsettled ticket (a client that went away, a cancelled handler, a connection
//! cut at shutdown) starts its settlement: the prompt and whatever output was delivered are
//! charged, or the hold is released when nothing was delivered. No code path can skip
//! billing.

use super::settling::Settling;
use super::Inner;
use crate::catalog::PriceList;
use crate::error::Error;
use crate::money::Credits;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Instant;
use tollgate_protocol::openai::Usage;

/// Everything settlement needs, captured when the request was admitted and held.
#[derive(Debug, Clone)]
pub(crate) struct Bill {
    pub inference_id: String,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub account_id: String,
    pub key_id: String,
    pub model: String,
    /// The provider that answered (or was tried last).
    pub provider: Option<String>,
    pub price: PriceList,
    pub held: Credits,
    /// Output tokens allowed across all choices (what was sent upstream × n).
    pub output_allowed: u64,
    /// The local prompt count without margin, for usage the upstream did not report.
    pub prompt_tokens: u64,
    /// The key period the hold counts in (when the key has a limit).
    pub key_period_start: Option<DateTime<Utc>>,
    pub stream: bool,
    pub started: Instant,
    pub created_at: DateTime<Utc>,
    pub first_token_ms: Option<u64>,
    /// Text delivered to the client so far (streams), for charging a cut stream.
    pub delivered: String,
    pub upstream_usage: Option<Usage>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A complete response: charge its usage.
    Done,
    /// Ended early (upstream failure mid-stream, client gone, server shutting down): charge
    /// what was delivered.
    Cut(&'static str),
    /// Failed before any output: release, charge nothing.
    Failed(&'static str),
}

pub(crate) struct Ticket {
    inner: Arc<Inner>,
    bill: Option<Bill>,
}

impl Ticket {
    pub fn new(inner: Arc<Inner>, bill: Bill) -> Self {
        Self {
            inner,
            bill: Some(bill),
        }
    }

    pub fn bill_mut(&mut self) -> &mut Bill {
        self.bill
            .as_mut()
            .expect("a ticket's bill is present until it is settled")
    }

    /// Settles now and waits until the charge is committed (retrying a settlement that
    /// fails). The settlement is started detached, and if the caller is cancelled before it
    /// is answered, a task finishes it (the usage row included): cancelling the caller
    /// cannot cut it in half.
    pub async fn settle(mut self, outcome: Outcome) -> Result<(Credits, Usage), Error> {
        let Some(bill) = self.bill.take() else {
            return Err(Error::Internal);
        };
        Ok(Settling::start(&self.inner, bill, outcome).finish().await)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(bill) = self.bill.take() {
            let why = self.inner.cut_code();
            let outcome = if bill.delivered.is_empty() && bill.upstream_usage.is_none() {
                Outcome::Failed(why)
            } else {
                Outcome::Cut(why)
            };
            // Dropped at once: its task finishes it.
            drop(Settling::start(&self.inner, bill, outcome));
        }
    }
}
