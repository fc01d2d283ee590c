//! Request, response and stream types of the wire formats tollgate speaks.
//!
//! Layout:
//! - [`openai`]: the OpenAI chat-completions format (request validation, usage, chunks).
//! - [`raw`]: a JSON object read one level deep, rewritten without a `Value` tree.
//! - [`validate`]: the body-validation error every format reports.

pub mod openai;
pub mod raw;
pub mod tokens;
pub mod validate;

pub use validate::BodyError;
