//! Extractors: the caller's key and size-limited request bodies.

pub mod auth;
pub mod body;
