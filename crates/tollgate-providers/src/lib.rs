//! Upstream provider adapters, one per wire family, behind one trait.
//!
//! Layout:
//! - [`adapter`]: the [`ChatProvider`] trait and the call/reply types every adapter speaks.
//! - [`error`]: what can go wrong upstream, classified once for routing and billing.
//! - [`sse`]: the one server-sent-events decoder all streaming adapters share.
//! - [`http`]: the outbound HTTP client (hyper, rustls, pooled connections).
//! - [`body`]: reading an upstream response body whole, as far as a size limit.
//! - [`openai_compat`]: OpenAI and every service speaking its wire format (vendors are data).
//! - [`demo`]: the built-in offline provider with deterministic output.
//! - [`registry`]: provider ids to adapters.
//! - [`secret`]: configured secrets, URLs printed without credentials, and the redaction of
//!   upstream text.

pub mod adapter;
pub mod body;
pub mod demo;
pub mod error;
pub mod http;
pub mod openai_compat;
pub mod registry;
pub mod secret;
pub mod sse;

pub use adapter::{ChatCall, ChatProvider, ChatReply, ChunkStream, Timeouts};
pub use error::ProviderError;
pub use registry::Registry;
