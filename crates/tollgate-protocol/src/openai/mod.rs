//! The OpenAI chat-completions format.

pub mod chat;
pub mod chunk;
pub mod usage;

pub use chat::{ChatRequest, Message};
pub use usage::Usage;
