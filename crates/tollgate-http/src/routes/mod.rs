//! Handlers, one file per endpoint, named after its path.

pub mod fallback;
pub mod health;
pub mod metrics;
pub mod v1;
