//! Extractors: the caller's key and size-limited request bodies, read within their
//! deadlines and the memory budget.

pub mod auth;
pub mod body;
pub mod memory;
