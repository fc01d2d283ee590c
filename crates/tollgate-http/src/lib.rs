//! HTTP in: the route table, extractors, middleware and the one error-to-response mapping.
//!
//! Layout:
//! - [`router`]: the whole route table in one function.
//! - [`state`]: the handles every handler shares.
//! - [`error`]: every error → status, code and the SPEC §6 JSON body, in one match.
//! - `extract/`: bearer key and size-limited body extractors.
//! - `middleware/`: request ids and the error-body finisher.
//! - `routes/`: one file per endpoint, named after its path.
//! - [`server`]: the connection loop (buffer limits, header deadline, graceful drain).

pub mod error;
mod extract;
mod middleware;
pub mod router;
mod routes;
pub mod server;
pub mod state;

pub use router::router;
pub use state::AppState;
