//! The OpenAI chat-completions format.

pub mod chat;
pub mod chunk;
pub mod completion;
pub mod usage;

pub use chat::ChatRequest;
pub use completion::ChatCompletion;
pub use usage::Usage;
