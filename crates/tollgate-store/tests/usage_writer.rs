//! The usage writer runs on a thread of its own: its rows reach the database while the
//! runtime that records them is busy, so writing a batch never holds up that runtime.

use rusqlite::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::money::Credits;
use tollgate_core::usage::{UsageRecord, UsageStatus, UsageWriter};
use tollgate_store::SqliteStore;

fn row(i: usize) -> UsageRecord {
    UsageRecord {
        inference_id: format!("inf-{i}"),
        request_id: format!("req-{i}"),
        client_request_id: None,
        account_id: "acct".into(),
        key_id: "key".into(),
        model: "openai/gpt-4o-mini".into(),
        status: UsageStatus::Succeeded,
        origin: "api",
        error_code: None,
        prompt_tokens: 8,
        completion_tokens: 16,
        cached_tokens: 0,
        credits: Credits(42),
        stream: false,
        duration_ms: 1,
        ttft_ms: None,
        created_at: chrono::Utc::now(),
    }
}

fn logged(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .and_then(|c| c.query_row("SELECT count(*) FROM usage_logs", [], |r| r.get(0)))
        .unwrap_or(-1)
}

#[test]
fn rows_are_written_while_the_recording_runtime_is_blocked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("u.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("open");
        let (writer, done) =
            UsageWriter::start(Arc::new(store), Duration::from_millis(5)).expect("writer");
        for i in 0..300 {
            writer.record(row(i));
        }
        // This runtime's only thread sleeps without yielding: a writer that ran as a task
        // here could not write a row until it returned.
        let deadline = Instant::now() + Duration::from_secs(10);
        while logged(&path) < 300 {
            assert!(
                Instant::now() < deadline,
                "rows were not written while the recording runtime was blocked ({} of 300)",
                logged(&path)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(writer);
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the writer finishes once its senders are gone")
            .expect("the writer reports that it finished");
    });
}

#[tokio::test]
async fn new_databases_use_one_kibibyte_pages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.db");
    SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    let size: i64 = Connection::open(&path)
        .and_then(|c| c.query_row("PRAGMA page_size", [], |r| r.get(0)))
        .expect("page size");
    assert_eq!(size, 1024);
}
