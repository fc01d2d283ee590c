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
use futures::future::BoxFuture;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tollgate_protocol::openai::Usage;
use tollgate_protocol::tokens;

/// Places a hold. The store starts it detached (it happens whether or not this future is
/// polled to the end); if the request is cancelled before the answer arrives (the client
/// went away), a task waits for the answer and releases the hold.
pub(crate) async fn place_hold(
    inner: &Arc<Inner>,
    req: HoldRequest,
    model: String,
) -> Result<Hold, HoldError> {
    let release = Settlement {
        hold_id: req.id.clone(),
        account_id: req.account_id.clone(),
        charge: Credits::ZERO,
        model,
        key_period_start: req.key_limit.map(|(_, start)| start),
    };
    let pending = inner.store.clone().hold_detached(req);
    HoldWait {
        inner: inner.clone(),
        pending: Some((pending, release)),
    }
    .wait()
    .await
}

/// A hold being placed; released if abandoned before its answer was taken.
struct HoldWait {
    inner: Arc<Inner>,
    pending: Option<(BoxFuture<'static, Result<Hold, HoldError>>, Settlement)>,
}

impl HoldWait {
    async fn wait(mut self) -> Result<Hold, HoldError> {
        let result = match self.pending.as_mut() {
            Some((pending, _)) => pending.await,
            None => {
                return Err(HoldError::Store(StoreError::Database(
                    "no hold pending".into(),
                )))
            }
        };
        self.pending = None;
        result
    }
}

impl Drop for HoldWait {
    fn drop(&mut self) {
        let Some((pending, release)) = self.pending.take() else {
            return;
        };
        let store = self.inner.store.clone();
        self.inner.tasks.spawn(async move {
            if pending.await.is_ok() {
                if let Err(e) = store.settle(release).await {
                    tracing::error!(error = %e, "releasing the hold of a cancelled request failed; it lapses with its lease");
                }
            }
        });
    }
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

    /// Settles now and waits until the charge is committed. The settlement is started
    /// detached, and if the caller is cancelled before it is answered, a task finishes it
    /// (the usage row included): cancelling the caller cannot cut it in half.
    pub async fn settle(mut self, outcome: Outcome) -> Result<(Credits, Usage), Error> {
        let Some(bill) = self.bill.take() else {
            return Err(Error::Internal);
        };
        Settling::start(&self.inner, bill, outcome).finish().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(bill) = self.bill.take() {
            let outcome = if bill.delivered.is_empty() && bill.upstream_usage.is_none() {
                Outcome::Failed("client_closed")
            } else {
                Outcome::Cut("client_closed")
            };
            // Dropped at once: its task finishes it.
            drop(Settling::start(&self.inner, bill, outcome));
        }
    }
}

/// The store's answer to a settlement, still to come.
type SettledLater = BoxFuture<'static, Result<Settled, StoreError>>;

/// A settlement under way: the store's answer to wait for, then the usage row to write.
struct Settling {
    inner: Arc<Inner>,
    pending: Option<(SettledLater, Bill, Usage, Outcome)>,
}

impl Settling {
    /// Works out the charge and starts the store's settlement.
    fn start(inner: &Arc<Inner>, bill: Bill, outcome: Outcome) -> Self {
        let usage = usage_for(&bill, outcome);
        let charge = charge_for(inner, &bill, &usage);
        let pending = inner.store.clone().settle_detached(Settlement {
            hold_id: bill.inference_id.clone(),
            account_id: bill.account_id.clone(),
            charge,
            model: bill.model.clone(),
            key_period_start: bill.key_period_start,
        });
        Self {
            inner: inner.clone(),
            pending: Some((pending, bill, usage, outcome)),
        }
    }

    async fn finish(mut self) -> Result<(Credits, Usage), Error> {
        let Some((pending, ..)) = self.pending.as_mut() else {
            return Err(Error::Internal);
        };
        let settled = pending.await;
        let Some((_, bill, usage, outcome)) = self.pending.take() else {
            return Err(Error::Internal);
        };
        record(&self.inner, bill, usage, outcome, settled)
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        let Some((pending, bill, usage, outcome)) = self.pending.take() else {
            return;
        };
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let settled = pending.await;
            if let Err(e) = record(&inner, bill, usage, outcome, settled) {
                tracing::error!(error = %e, "settling a dropped request failed; its hold lapses with its lease");
            }
        });
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

/// What to charge for `usage`: its cost, capped at the hold unless the upstream returned
/// more output than it was allowed (then the actual cost, logged and counted).
fn charge_for(inner: &Inner, bill: &Bill, usage: &Usage) -> Credits {
    let cost = bill.price.chat_cost(usage);
    if cost <= bill.held {
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
    }
}

/// Takes the store's answer and writes the usage row.
fn record(
    inner: &Inner,
    bill: Bill,
    usage: Usage,
    outcome: Outcome,
    settled: Result<Settled, StoreError>,
) -> Result<(Credits, Usage), Error> {
    let settled = settled.map_err(|e| {
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
