//! The OpenAI-compatible `/v1` routes.

pub mod billing_balance;
pub mod chat_completions;
pub mod models;
