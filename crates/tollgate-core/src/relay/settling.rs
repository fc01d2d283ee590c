//! A settlement under way: the charge worked out from the bill, sent to the store with the
//! request's log row, retried until it lands, then reported.
//!
//! A settlement is idempotent by inference id, so a retry after a failed (or unanswered)
//! attempt charges once. It is retried until it lands or the process stops; a process that
//! stops first leaves the hold to the crash rules (released, never charged).

use super::ticket::{Bill, Outcome};
use super::Inner;
use crate::metrics::Metrics;
use crate::money::Credits;
use crate::store::{Settled, Settlement, StoreError};
use crate::usage::{ChargeCap, UsageRecord, UsageStatus};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_protocol::openai::Usage;
use tollgate_protocol::tokens;

/// The first wait before a failed settlement is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The store's answer to a settlement, still to come.
type SettledLater = BoxFuture<'static, Result<Settled, StoreError>>;

struct State {
    settlement: Settlement,
    usage: Usage,
    /// The attempt in flight; `None` while waiting to try again.
    pending: Option<SettledLater>,
    failures: u32,
}

/// A settlement under way. Dropped before it lands, it hands itself to a task that finishes
/// it.
pub(crate) struct Settling {
    inner: Arc<Inner>,
    state: Option<State>,
}

impl Settling {
    /// Works out the charge and starts the store's settlement.
    pub fn start(inner: &Arc<Inner>, bill: Bill, outcome: Outcome) -> Self {
        let measured = bill.upstream_usage.is_some() && !matches!(outcome, Outcome::Failed(_));
        let usage = usage_for(&bill, outcome);
        let (charge, capped) = charge_for(inner, &bill, &usage, measured);
        let settlement = Settlement {
            charge,
            key_period_start: bill.key_period_start,
            row: row(bill, &usage, outcome, capped),
        };
        let pending = inner.store.clone().settle_detached(settlement.clone());
        Self {
            inner: inner.clone(),
            state: Some(State {
                settlement,
                usage,
                pending: Some(pending),
                failures: 0,
            }),
        }
    }

    /// Waits until the settlement has landed, trying again while it fails; returns what was
    /// charged and the usage it was charged for.
    pub async fn finish(mut self) -> (Credits, Usage) {
        loop {
            let state = self.state.as_mut().expect("a settlement is finished once");
            let answer = match state.pending.as_mut() {
                Some(pending) => pending.await,
                None => {
                    let again = state.settlement.clone();
                    state.pending = Some(self.inner.store.clone().settle_detached(again));
                    continue;
                }
            };
            match answer {
                Ok(settled) => {
                    let state = self.state.take().expect("the settlement was just answered");
                    return landed(&self.inner, state, settled);
                }
                Err(e) => {
                    state.pending = None;
                    state.failures += 1;
                    Metrics::bump(&self.inner.metrics.settlement_failures);
                    let wait = RETRY_FIRST
                        .saturating_mul(1 << state.failures.min(10))
                        .min(RETRY_MAX);
                    tracing::error!(
                        error = %e, inference_id = %state.settlement.hold_id(), attempt = state.failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "settlement failed; its hold stays until it lands"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let rest = Settling {
                inner: self.inner.clone(),
                state: Some(state),
            };
            self.inner.tasks.spawn(async move {
                rest.finish().await;
            });
        }
    }
}

/// The settlement landed: the hold is no longer this process's to renew.
fn landed(inner: &Inner, state: State, settled: Settled) -> (Credits, Usage) {
    let s = &state.settlement;
    inner.leases.remove(s.hold_id());
    if let Settled::ChargedWithoutHold(charged) = settled {
        Metrics::bump(&inner.metrics.holds_lost);
        tracing::error!(
            inference_id = %s.hold_id(), account = %s.account_id(), asked = s.charge.0, charged = charged.0,
            "the request's hold was released while it ran; charged from the request's own record"
        );
    }
    (settled.credits(), state.usage)
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

/// What to charge for `usage`: its cost, capped at the hold, unless the upstream itself
/// reported (`measured`) more output than it was allowed: then the actual cost, counted and
/// logged. A local estimate never goes past the hold.
fn charge_for(
    inner: &Inner,
    bill: &Bill,
    usage: &Usage,
    measured: bool,
) -> (Credits, Option<ChargeCap>) {
    let cost = bill.price.chat_cost(usage);
    if cost <= bill.held {
        return (cost, None);
    }
    if measured && usage.completion_tokens > bill.output_allowed {
        Metrics::bump(&inner.metrics.overages);
        let provider = bill.provider.as_deref().unwrap_or("none");
        let subject = format!("{}@{provider}", bill.model);
        if let Some(events) = inner.overage_log.note(&subject, Instant::now()) {
            tracing::warn!(
                model = %bill.model, provider, events,
                last_inference_id = %bill.inference_id, cost = cost.0, held = bill.held.0,
                completion_tokens = usage.completion_tokens, allowed = bill.output_allowed,
                "upstream returned more output than allowed; charging the actual cost (one line per minute per model and provider)"
            );
        }
        return (cost, None);
    }
    (bill.held, Some(ChargeCap::Hold))
}

/// The request's log row; its `credits` are set by the store to what it charged.
fn row(bill: Bill, usage: &Usage, outcome: Outcome, capped: Option<ChargeCap>) -> UsageRecord {
    let (status, error_code) = match outcome {
        Outcome::Done => (UsageStatus::Succeeded, None),
        Outcome::Cut(code) => (UsageStatus::Succeeded, Some(code)),
        Outcome::Failed(code) => (UsageStatus::Failed, Some(code)),
    };
    UsageRecord {
        inference_id: bill.inference_id,
        request_id: bill.request_id,
        client_request_id: bill.client_request_id,
        account_id: bill.account_id,
        key_id: bill.key_id,
        model: bill.model,
        provider: bill.provider,
        status,
        origin: "api",
        error_code,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        credits: Credits::ZERO,
        capped,
        stream: bill.stream,
        duration_ms: u64::try_from(bill.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ttft_ms: bill.first_token_ms,
        created_at: bill.created_at,
    }
}
