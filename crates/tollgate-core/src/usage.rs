//! Usage log rows and the batched writer that keeps them off the hot path.

use crate::money::Credits;
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Outcome of a request as the logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStatus {
    Succeeded,
    Failed,
}

impl UsageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// One request's log row.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub inference_id: String,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub account_id: String,
    pub key_id: String,
    pub model: String,
    pub status: UsageStatus,
    pub origin: &'static str,
    pub error_code: Option<&'static str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub credits: Credits,
    pub stream: bool,
    pub duration_ms: u64,
    pub ttft_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
}

/// Most rows written in one batch.
const BATCH: usize = 512;

/// Sends rows to a background task that writes them in batches.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::UnboundedSender<UsageRecord>,
}

impl UsageWriter {
    /// Starts the writer on a thread of its own, so that writing a batch never holds up a
    /// server worker's requests. The returned receiver answers once every sender is dropped
    /// and the last rows are written; it fails if the writer thread panicked.
    pub fn start(
        store: Arc<dyn Store>,
        flush_every: Duration,
    ) -> std::io::Result<(Self, oneshot::Receiver<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tollgate-usage".into())
            .spawn(move || {
                runtime.block_on(run(store, rx, flush_every));
                let _ = done_tx.send(());
            })?;
        Ok((Self { tx }, done))
    }

    pub fn record(&self, row: UsageRecord) {
        if let Err(e) = self.tx.send(row) {
            tracing::error!(inference_id = %e.0.inference_id, "usage writer stopped; row lost");
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<UsageRecord>,
    flush_every: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = rx.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            return;
        }
        if batch.len() < BATCH {
            // Let a burst gather into one write.
            tokio::time::sleep(flush_every).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
        }
        write(&*store, &batch).await;
        batch.clear();
    }
}

async fn write(store: &dyn Store, batch: &[UsageRecord]) {
    for attempt in 1..=5u32 {
        match store.record_usage(batch).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, rows = batch.len(), "usage log write failed");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(rows = batch.len(), "usage log rows dropped after retries");
}
