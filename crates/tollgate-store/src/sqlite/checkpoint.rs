//! WAL checkpoints on their own thread, so a request never waits while pages are copied back
//! to the database file and synced.
//!
//! A checkpoint copies the frames written before it started; under steady load new frames
//! keep arriving, so the WAL would never be fully copied and could never start over. When it
//! has grown past [`RESTART_AT`], the thread copies what it can while writes go on, then
//! pauses writes for the (short) remainder, after which the next commit starts the WAL anew.
//! After a quiet second it empties the WAL, so that it does not go cold in the page cache.

use super::combiner::Combiner;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the WAL is copied back into the database file.
const INTERVAL: Duration = Duration::from_millis(250);
/// Checkpoints in a row with no commit in between after which the WAL is emptied (cut to
/// nothing): the frames written after a quiet spell are appended to new blocks. A frame (a
/// 24-byte header, then the page) never lines up with the file system's blocks, and
/// overwriting a block of an old WAL that the kernel has stopped caching reads it from disk
/// first, on a request's path. Under steady load the WAL's blocks are rewritten too often to
/// go cold, and it is never cut (cutting hundreds of megabytes is a stall of its own).
const QUIET_TICKS: u32 = 4;
/// WAL size above which the checkpoint finishes with writes paused, so the WAL restarts. The
/// pause costs a few milliseconds (the database file's fsync), so it is kept rare.
pub(crate) const RESTART_AT: u64 = 256 << 20;

/// Stops its thread when dropped.
pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
}

impl Checkpointer {
    pub fn start(path: PathBuf, writer: Combiner) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate-sqlite-checkpoint".into())
            .spawn(move || run(&path, &writer, &flag));
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

fn run(path: &Path, writer: &Combiner, stop: &AtomicBool) {
    let conn = match super::walvfs::open(path, rusqlite::OpenFlags::default()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the checkpoint thread cannot open the database");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let checkpoint = || {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    };
    let data_version = || {
        conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    let (mut seen, mut quiet) = (data_version(), 0u32);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(INTERVAL);
        checkpoint();
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if size > RESTART_AT {
            writer.pause_writes(checkpoint);
        }
        let now = data_version();
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
        if quiet == QUIET_TICKS && size > 0 {
            // Nothing committed for a while: empty the WAL now, at no one's expense (a
            // reader still in it makes this a no-op until the next quiet spell).
            let _ = conn.busy_timeout(Duration::from_millis(20));
            writer.pause_writes(|| {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            });
            let _ = conn.busy_timeout(Duration::from_secs(5));
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use tollgate_core::store::StoreError;

    #[tokio::test]
    async fn a_quiet_wal_is_emptied_and_keeps_what_was_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
            .expect("schema");
        let writer = Combiner::new(conn, Arc::new(AtomicU64::new(0)));
        let _checkpointer = Checkpointer::start(path.clone(), writer.clone());
        let wal = dir.path().join("q.db-wal");
        for x in 0..100 {
            writer
                .run(move |b| {
                    b.write(|c| {
                        c.execute("INSERT INTO t (x) VALUES (?1)", [x])
                            .map_err(super::super::db)
                    })
                })
                .await
                .expect("insert");
        }
        assert!(std::fs::metadata(&wal).expect("wal").len() > 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&wal).expect("wal").len() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was never emptied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = writer
            .run(|b| {
                b.conn()
                    .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .map_err(super::super::db)
            })
            .await
            .map_err(|e: StoreError| e)
            .expect("count");
        assert_eq!(n, 100);
    }
}
