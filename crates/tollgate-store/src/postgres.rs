//! The PostgreSQL store, shared by any number of tollgate nodes; rows touched by money
//! movements are locked with `FOR UPDATE` inside short transactions.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

pub struct PgStore {
    pub(crate) write: PgPool,
    pub(crate) read: PgPool,
}

impl PgStore {
    /// Connects to `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            write: pool.clone(),
            read: pool,
        })
    }
}

crate::store_impl::store_impl!(PgStore, sqlx::Postgres, "BEGIN", " FOR UPDATE");
