//! A node's claim on its id: a session advisory lock, held on a connection of its own for as
//! long as the process serves. PostgreSQL drops the lock when that session ends (the process
//! exits or is killed), so a node that finds the lock free knows that no live process serves
//! under its id, and may release the holds a previous run left; one that finds it taken is
//! refused instead of releasing a live node's holds.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tollgate_core::store::StoreError;

/// How often the claim's connection is checked (and the lock taken again if it was lost).
const CHECK_EVERY: Duration = Duration::from_secs(5);

pub(crate) struct NodeClaim {
    options: PgConnectOptions,
    held: Mutex<Option<(String, JoinHandle<()>)>>,
}

impl NodeClaim {
    pub fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            held: Mutex::new(None),
        }
    }

    /// Takes the lock for `node_id`, or fails when another live session holds it.
    pub async fn claim(&self, node_id: &str) -> Result<(), StoreError> {
        let mut held = self.held.lock().await;
        if let Some((claimed, _)) = held.as_ref() {
            return if claimed == node_id {
                Ok(())
            } else {
                Err(StoreError::Database(format!(
                    "this store already serves as node `{claimed}`"
                )))
            };
        }
        let mut conn = PgConnection::connect_with(&self.options)
            .await
            .map_err(|e| {
                StoreError::Database(format!("cannot open the node's claim connection: {e}"))
            })?;
        if !try_lock(&mut conn, node_id).await? {
            return Err(StoreError::Database(format!(
                "another tollgate node is serving with node id `{node_id}`: each running node needs an id of its own (set `node.id`, or leave it empty for <hostname>:<port>), or one node's restart would release the other's live holds"
            )));
        }
        let task = tokio::spawn(keep(conn, self.options.clone(), node_id.to_owned()));
        *held = Some((node_id.to_owned(), task));
        Ok(())
    }
}

impl Drop for NodeClaim {
    fn drop(&mut self) {
        if let Some((_, task)) = self.held.get_mut().take() {
            task.abort();
        }
    }
}

async fn try_lock(conn: &mut PgConnection, node_id: &str) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("tollgate-node:{node_id}"))
        .fetch_one(conn)
        .await
        .map_err(|e| StoreError::Database(format!("cannot take the node's claim: {e}")))
}

/// Keeps the claim's session alive; if it ends (the server restarted, the network broke),
/// opens a new one and takes the lock again.
async fn keep(mut conn: PgConnection, options: PgConnectOptions, node_id: String) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if conn.ping().await.is_ok() {
            continue;
        }
        tracing::warn!(node = %node_id, "the node's claim connection was lost; taking the claim again");
        let retaken = match PgConnection::connect_with(&options).await {
            Ok(mut fresh) => match try_lock(&mut fresh, &node_id).await {
                Ok(true) => Some(fresh),
                Ok(false) => {
                    tracing::error!(node = %node_id, "another process took this node's id while its claim was lost: two nodes now serve under one id");
                    None
                }
                Err(e) => {
                    tracing::warn!(node = %node_id, error = %e, "taking the node's claim again failed");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(node = %node_id, error = %e, "reconnecting the node's claim failed");
                None
            }
        };
        if let Some(fresh) = retaken {
            conn = fresh;
        }
    }
}
