//! Every way a request can fail, in domain terms; `tollgate-http` maps each to a status once.

use tollgate_protocol::BodyError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Body(#[from] BodyError),
    #[error("{0}")]
    Unsupported(String),
    #[error("This request requires a valid API key. Pass it as `Authorization: Bearer <key>`; keys are created in the dashboard or with `tollgate key create`.")]
    InvalidKey,
    #[error("You have exhausted the available [plan.rule:api_token] resource limit. Update your payment method to continue using the service. For more information please visit {billing_url}")]
    CreditsExhausted { billing_url: String },
    #[error("The model `{model}` is not available on the free tier. Add a billing method (no charge) to unlock the full catalogue and receive a one-time grant of free credits: {billing_url}")]
    TierModelForbidden { model: String, billing_url: String },
    #[error("This key has reached its spending limit for the current period ({period}). Raise or remove the key's limit, or wait for the next period.")]
    KeyLimitReached { period: &'static str },
    #[error("{0}")]
    ScopeForbidden(String),
    #[error("This account is suspended: its keys cannot be used. Contact the operator of this deployment to have it reinstated.")]
    AccountSuspended,
    #[error("The model `{0}` does not exist or is not available. GET /v1/models lists the models you can call.")]
    ModelNotFound(String),
    #[error("Free-tier limit: You've reached your free limit for the hour. Add a billing method to continue without hourly limits, or retry in {retry_after} seconds.")]
    FreeTierLimit { retry_after: u64 },
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("The upstream provider answered with an invalid or failed response ({0}).")]
    BadGateway(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("The upstream provider did not finish in time; nothing was charged.")]
    GenerationTimeout,
    #[error("An internal error occurred; nothing was charged.")]
    Internal,
}
