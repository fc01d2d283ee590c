//! SQLite and PostgreSQL implementations of the store traits `tollgate-core` owns.
//!
//! Layout:
//! - [`store_impl`](self): the store written once, expanded per backend.
//! - [`sqlite`]: the default, embedded store; [`postgres`]: the shared multi-node store.
//! - `rows`: conversions between stored and domain values.

pub mod postgres;
mod rows;
pub mod sqlite;
mod store_impl;

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
