//! The adapter trait and the call/reply types every provider speaks.

use crate::error::ProviderError;
use futures::stream::BoxStream;
use std::time::Duration;
use tollgate_protocol::openai::chunk::Chunk;
use tollgate_protocol::openai::ChatCompletion;

/// Limits on a request's upstream calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response headers (non-stream) or the first event (stream), per attempt.
    pub first_byte: Duration,
    /// For the whole request: every attempt, stream included.
    pub total: Duration,
}

/// One chat call, already in OpenAI chat-completions form: `body` (JSON text) carries the
/// upstream model name, the output limit and (for streams) the request for usage.
#[derive(Debug, Clone)]
pub struct ChatCall {
    pub body: Vec<u8>,
    pub stream: bool,
    pub timeouts: Timeouts,
    /// When the request's time is up (its total timeout from its arrival, across every
    /// attempt): the call, stream included, must end by then.
    pub deadline: tokio::time::Instant,
}

/// A stream of OpenAI `chat.completion.chunk` objects; it ends after the upstream's `[DONE]`
/// and yields an error if the upstream fails or cuts the stream before it.
pub type ChunkStream = BoxStream<'static, Result<Chunk, ProviderError>>;

/// What an upstream answered.
pub enum ChatReply {
    Complete(ChatCompletion),
    Stream(ChunkStream),
}

impl std::fmt::Debug for ChatReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete(c) => write!(f, "ChatReply::Complete({c:?})"),
            Self::Stream(_) => write!(f, "ChatReply::Stream"),
        }
    }
}

/// A provider that serves chat completions.
#[async_trait::async_trait]
pub trait ChatProvider: Send + Sync + 'static {
    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError>;
}
