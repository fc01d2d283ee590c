//! WAL checkpoints on their own thread, so the writer never stalls copying pages back to the
//! database file and syncing it.

use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the WAL is copied back into the database file.
const INTERVAL: Duration = Duration::from_millis(500);

/// Stops its thread when dropped.
pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
}

impl Checkpointer {
    pub fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate-sqlite-checkpoint".into())
            .spawn(move || run(&path, &flag));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the checkpoint thread; SQLite checkpoints on commit instead");
        }
        Self { stop }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(path: &PathBuf, stop: &AtomicBool) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the checkpoint thread cannot open the database");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(INTERVAL);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}
