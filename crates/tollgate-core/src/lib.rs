//! The tollgate domain: who may call what, what it costs, and the path a request takes.
//! No HTTP, SQL or wire-client types live here.
//!
//! Layout (in request-path order):
//! - [`keys`], [`accounts`]: API keys and accounts, the tier derived from billing state.
//! - [`policy`]: admission (scopes, tier, free-tier rules) and the bounds of a request's cost.
//! - [`money`], [`catalog`]: integer credits, prices and models.
//! - [`store`]: the storage traits (holds, settlement, ledger) that `tollgate-store` implements.
//! - [`relay`]: the orchestrator: admit → hold → upstream → settle → log.
//! - [`usage`]: the usage-log row each settlement writes.
//! - [`metrics`], [`throttle`]: counters for `/metrics`, and log lines an upstream could
//!   otherwise repeat on every request.
//! - [`audit`]: the ledger check (balances, holds, and each usage row's charge).
//! - [`service`]: account actions (sign-up, keys, cards, grants) shared by the CLI and the API.
//! - [`payments`]: payment providers (the offline sandbox).

pub mod accounts;
pub mod audit;
pub mod catalog;
pub mod error;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod money;
pub mod payments;
pub mod policy;
pub mod relay;
pub mod service;
pub mod settings;
pub mod store;
pub mod throttle;
pub mod usage;

pub use error::Error;
pub use money::{CreditRate, Credits};
