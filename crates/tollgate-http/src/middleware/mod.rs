//! Middleware: request ids and the error-body finisher.

pub mod request;
