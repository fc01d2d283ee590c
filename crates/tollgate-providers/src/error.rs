//! What can go wrong upstream, classified once for routing and billing.

use thiserror::Error;

/// Which deadline an upstream missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    Connect,
    FirstByte,
    Total,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProviderError {
    /// The upstream could not be reached.
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream missed its {0:?} deadline")]
    Timeout(Deadline),
    /// The upstream answered with an error status; `message` is its own error text.
    #[error("the upstream answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
    /// The upstream answered with something that is not its documented format.
    #[error("the upstream sent an invalid response: {0}")]
    Invalid(String),
    /// The stream ended before the upstream said it was done.
    #[error("the upstream closed the stream early")]
    Cut,
}

impl ProviderError {
    /// Whether another route may be tried (nothing has reached the client yet).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(Deadline::Connect | Deadline::FirstByte) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Timeout(Deadline::Total) | Self::Invalid(_) | Self::Cut => false,
        }
    }
}
