//! Test-only helpers: fake upstream providers speaking their documented wire formats.
//!
//! - [`openai`]: a fake OpenAI chat-completions server on loopback, with scripted faults.

pub mod openai;

pub use openai::{closed_port_url, Behaviour, FakeOpenAi};
