//! A held request's bill: settles exactly once, when told or when dropped.
//!
//! Dropping an unsettled ticket (a client that went away, a cancelled handler) spawns its
//! settlement: the prompt and whatever output was delivered are charged, or the hold is
//! released when nothing was delivered. No code path can skip billing.

use super::Inner;
use crate::catalog::PriceList;
use crate::error::Error;
use crate::money::Credits;
use crate::store::{Hold, HoldError, HoldRequest, Settled, Settlement, StoreError};
use crate::usage::{UsageRecord, UsageStatus};
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tollgate_protocol::openai::Usage;
use tollgate_protocol::tokens;

/// Places a hold in its own task. If the request is cancelled while the hold is being
/// placed (the client went away), the task releases the hold as soon as it exists.
pub(crate) async fn place_hold(
    inner: &Arc<Inner>,
    req: HoldRequest,
    model: String,
) -> Result<Hold, HoldError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_inner = inner.clone();
    inner.tasks.spawn(async move {
        let release = Settlement {
            hold_id: req.id.clone(),
            account_id: req.account_id.clone(),
            charge: Credits::ZERO,
            model,
            key_period_start: req.key_limit.map(|(_, start)| start),
        };
        let result = task_inner.store.hold(req).await;
        if let Err(Ok(_)) = tx.send(result) {
            if let Err(e) = task_inner.store.settle(release).await {
                tracing::error!(error = %e, "releasing the hold of a cancelled request failed; it lapses with its lease");
            }
        }
    });
    rx.await
        .map_err(|_| HoldError::Store(StoreError::Database("the hold task ended early".into())))?
}

/// Everything settlement needs, captured when the hold was made.
#[derive(Debug, Clone)]
pub(crate) struct Bill {
    pub inference_id: String,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub account_id: String,
    pub key_id: String,
    pub model: String,
    pub price: PriceList,
    pub held: Credits,
    /// Output tokens allowed across all choices (what was sent upstream × n).
    pub output_allowed: u64,
    /// The local prompt count without margin, for usage the upstream did not report.
    pub prompt_tokens: u64,
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
    /// Ended early (upstream failure mid-stream or client gone): charge what was delivered.
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

    /// Settles now and waits until the charge is committed. The settlement runs in its own
    /// task, so cancelling the caller cannot cut it in half.
    pub async fn settle(mut self, outcome: Outcome) -> Result<(Credits, Usage), Error> {
        let Some(bill) = self.bill.take() else {
            return Err(Error::Internal);
        };
        let inner = self.inner.clone();
        let task = self
            .inner
            .tasks
            .spawn(async move { settle(&inner, bill, outcome).await });
        task.await.map_err(|_| Error::Internal)?
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(bill) = self.bill.take() {
            let inner = self.inner.clone();
            let outcome = if bill.delivered.is_empty() && bill.upstream_usage.is_none() {
                Outcome::Failed("client_closed")
            } else {
                Outcome::Cut("client_closed")
            };
            self.inner.tasks.spawn(async move {
                if let Err(e) = settle(&inner, bill, outcome).await {
                    tracing::error!(error = %e, "settling a dropped request failed; its hold lapses with its lease");
                }
            });
        }
    }
}

/// The usage to bill for an outcome.
fn usage_for(bill: &Bill, outcome: Outcome) -> Usage {
    match outcome {
        Outcome::Failed(_) => Usage::default(),
        Outcome::Done | Outcome::Cut(_) => bill.upstream_usage.unwrap_or_else(|| Usage {
            prompt_tokens: bill.prompt_tokens,
            completion_tokens: tokens::count(&bill.delivered),
            cached_tokens: 0,
        }),
    }
}

async fn settle(inner: &Inner, bill: Bill, outcome: Outcome) -> Result<(Credits, Usage), Error> {
    let usage = usage_for(&bill, outcome);
    let cost = bill.price.chat_cost(&usage);
    let charge = if cost <= bill.held {
        cost
    } else if usage.completion_tokens > bill.output_allowed {
        inner.overages.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            inference_id = %bill.inference_id, model = %bill.model, cost = cost.0, held = bill.held.0,
            completion_tokens = usage.completion_tokens, allowed = bill.output_allowed,
            "upstream returned more output than allowed; charging the actual cost"
        );
        cost
    } else {
        bill.held
    };
    let settled = inner
        .store
        .settle(Settlement {
            hold_id: bill.inference_id.clone(),
            account_id: bill.account_id.clone(),
            charge,
            model: bill.model.clone(),
            key_period_start: bill.key_period_start,
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, inference_id = %bill.inference_id, "settlement failed");
            Error::Internal
        })?;
    let charged = match settled {
        Settled::Charged(c) => c,
        Settled::AlreadySettled | Settled::HoldGone => Credits::ZERO,
    };
    let (status, error_code) = match outcome {
        Outcome::Done => (UsageStatus::Succeeded, None),
        Outcome::Cut(code) => (UsageStatus::Succeeded, Some(code)),
        Outcome::Failed(code) => (UsageStatus::Failed, Some(code)),
    };
    inner.usage.record(UsageRecord {
        inference_id: bill.inference_id,
        request_id: bill.request_id,
        client_request_id: bill.client_request_id,
        account_id: bill.account_id,
        key_id: bill.key_id,
        model: bill.model,
        status,
        origin: "api",
        error_code,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        credits: charged,
        stream: bill.stream,
        duration_ms: u64::try_from(bill.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ttft_ms: bill.first_token_ms,
        created_at: bill.created_at,
    });
    Ok((charged, usage))
}
