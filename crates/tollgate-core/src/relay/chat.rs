//! Chat completions: admit → hold → call upstream → settle → log.

use super::hold;
use super::routes::{self, Upstream};
use super::stream::sse_reply;
use super::ticket::{Bill, Outcome, Ticket};
use super::{Relay, RequestMeta};
use crate::error::Error;
use crate::ids;
use crate::money::Credits;
use crate::policy::{self, Principal};
use crate::store::{HoldError, HoldRequest};
use bytes::Bytes;
use chrono::Utc;
use futures::stream::BoxStream;
use std::time::{Duration, Instant};
use tollgate_protocol::openai::ChatRequest;
use tollgate_providers::error::Deadline;
use tollgate_providers::ProviderError;

/// A reply ready for the edge.
pub struct ChatReply {
    pub inference_id: String,
    pub body: ReplyBody,
    /// Time spent waiting for the upstream: from the first attempt until its response (or,
    /// streaming, its first event) was in hand, retries and fallbacks included.
    pub upstream: Duration,
}

pub enum ReplyBody {
    /// A complete response, already charged: its body (JSON) carries `meta.usage`.
    Json {
        body: Vec<u8>,
        credits: Credits,
        usd: String,
    },
    /// Server-sent events, each item one or more complete events.
    Stream(BoxStream<'static, Bytes>),
}

impl Relay {
    pub async fn chat(
        &self,
        who: &Principal,
        meta: RequestMeta,
        req: ChatRequest,
    ) -> Result<ChatReply, Error> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let admission = policy::admit(settings, &inner.catalog, who, &req)?;
        let inference_id = ids::inference_id();
        let now = Utc::now();
        let key_limit = who.key.limit.map(|l| (l, l.retention.period_start(now)));
        let bill = Bill {
            inference_id: inference_id.clone(),
            request_id: meta.request_id,
            client_request_id: meta.client_request_id,
            account_id: who.account.id.clone(),
            key_id: who.key.id.clone(),
            model: admission.model.id.clone(),
            provider: None,
            price: admission.price,
            held: Credits::ZERO,
            output_allowed: 0,
            prompt_tokens: admission.counted_prompt_tokens,
            key_period_start: None,
            stream: req.stream,
            started: meta.started,
            created_at: now,
            first_token_ms: None,
            delivered: String::new(),
            upstream_usage: None,
        };
        let request = HoldRequest {
            id: inference_id.clone(),
            account_id: who.account.id.clone(),
            key_id: who.key.id.clone(),
            node_id: settings.node_id.clone(),
            now,
            lease_until: now + settings.hold_lease,
            min: admission.min,
            max: admission.max,
            key_limit,
            free_tier: admission.free_tier,
        };
        let (hold, mut bill) = hold::place(inner, request, bill).await.map_err(|(e, _)| {
            hold_error(e, settings, key_limit.map(|(l, _)| l.retention.as_str()))
        })?;
        let output = admission.output_for(hold.amount);
        bill.held = hold.amount;
        bill.key_period_start = hold.key_period;
        bill.output_allowed = output.saturating_mul(admission.choices);
        let mut ticket = Ticket::new(inner.clone(), bill);
        let include_usage = req.include_usage;
        let called = Instant::now();
        // The request's one upstream deadline, across every attempt and its whole stream.
        let deadline = tokio::time::Instant::from_std(called) + settings.upstream_timeouts.total;
        let upstream = routes::call(inner, &admission.model, &req, output, deadline).await;
        let waited = called.elapsed();
        ticket.bill_mut().provider = upstream.provider;
        let upstream = match upstream.result {
            Ok(up) => up,
            Err(e) => {
                let error = provider_error(&e);
                ticket.settle(Outcome::Failed(error_code(&e))).await?;
                return Err(error);
            }
        };
        match upstream {
            Upstream::Complete(completion) => {
                let bill = ticket.bill_mut();
                bill.upstream_usage = completion.usage();
                if bill.upstream_usage.is_none() {
                    completion.message_text(&mut bill.delivered);
                }
                let (credits, _) = ticket.settle(Outcome::Done).await?;
                let usd = settings.rate.usd(credits);
                let meta = settings.rate.usage_meta(credits);
                let body = completion.render(&admission.model.id, meta.as_bytes());
                Ok(ChatReply {
                    inference_id,
                    body: ReplyBody::Json { body, credits, usd },
                    upstream: waited,
                })
            }
            Upstream::Stream { first, rest } => {
                let events = sse_reply(
                    ticket,
                    first,
                    rest,
                    include_usage,
                    admission.model.id.clone(),
                    settings.rate,
                );
                Ok(ChatReply {
                    inference_id,
                    body: ReplyBody::Stream(events),
                    upstream: waited,
                })
            }
        }
    }
}

fn hold_error(
    e: HoldError,
    settings: &crate::settings::Settings,
    period: Option<&'static str>,
) -> Error {
    match e {
        HoldError::Credits { .. } => Error::CreditsExhausted { billing_url: settings.billing_url.clone() },
        HoldError::KeyLimit => Error::KeyLimitReached { period: period.unwrap_or("no_reset") },
        HoldError::FreeHourly { retry_after_secs } => Error::FreeTierLimit { retry_after: retry_after_secs },
        HoldError::FreeInFlight => Error::RateLimited {
            message: format!(
                "Free-tier limit: at most {} request(s) in flight per account. Wait for the running request to finish, or add a billing method.",
                settings.free_tier.max_in_flight
            ),
            retry_after: 1,
        },
        HoldError::Store(e) => {
            tracing::error!(error = %e, "hold failed");
            Error::Internal
        }
    }
}

/// The client-facing error for an upstream failure.
pub(crate) fn provider_error(e: &ProviderError) -> Error {
    match e {
        ProviderError::Timeout(_) => Error::GenerationTimeout,
        ProviderError::Connect(_) => Error::Unavailable(
            "No upstream provider for this model is reachable right now; nothing was charged. Retry shortly.".into(),
        ),
        ProviderError::Status { status: 429, retry_after, .. } => Error::RateLimited {
            message: "The upstream provider is rate limiting requests for this model; nothing was charged. Retry shortly.".into(),
            retry_after: retry_after.unwrap_or(1),
        },
        ProviderError::Status { status: 400 | 404 | 413 | 422, message, .. } => {
            Error::Unsupported(format!("The upstream provider rejected the request: {message}"))
        }
        ProviderError::Status { status, .. } => Error::BadGateway(format!("upstream status {status}")),
        ProviderError::Invalid(_) => Error::BadGateway("invalid upstream response".into()),
        ProviderError::Cut => Error::BadGateway("upstream closed the connection early".into()),
    }
}

pub(crate) fn error_code(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Timeout(Deadline::Connect) => "upstream_connect_timeout",
        ProviderError::Timeout(_) => "generation_timeout",
        ProviderError::Connect(_) => "upstream_unreachable",
        ProviderError::Status { .. } => "upstream_error",
        ProviderError::Invalid(_) | ProviderError::Cut => "bad_gateway",
    }
}
