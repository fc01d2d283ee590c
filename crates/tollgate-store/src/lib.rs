//! SQLite and PostgreSQL implementations of the store traits `tollgate-core` owns.
//!
//! Layout:
//! - [`sqlite`]: the default, embedded store (rusqlite; one serving process, live holds in
//!   memory, flat-combined group commit).
//! - [`postgres`]: the shared multi-node store (sqlx; row locks in short transactions).
//! - `reserve`: the hold and settlement arithmetic both share, so they cannot drift.
//! - `rows`: conversions between stored and domain values, and shared SQL.

pub mod postgres;
mod reserve;
mod rows;
pub mod sqlite;

use std::sync::Arc;
use tollgate_core::store::Store;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Opens the store a database URL names (`sqlite:` or `postgres:`), applying migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, String> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url)
            .await
            .map_err(|e| format!("cannot open {url}: {e}"))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PgStore::connect(url)
            .await
            .map_err(|e| format!("cannot connect to the PostgreSQL database: {e}"))?;
        Ok(Arc::new(store))
    } else {
        Err(format!(
            "unsupported database URL `{url}`: expected sqlite://PATH or postgres://…"
        ))
    }
}
