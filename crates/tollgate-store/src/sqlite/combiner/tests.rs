//! The combiner's tests: group commit, failing and panicking jobs, hand-overs between
//! threads, and the looks for outside commits.
use super::*;

fn open() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Combiner,
    Arc<AtomicU64>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.db");
    let conn = super::super::walvfs::open(&path, rusqlite::OpenFlags::default()).expect("open");
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
        .expect("schema");
    let epoch = Arc::new(AtomicU64::new(0));
    let combiner = Combiner::new(conn, epoch.clone());
    (dir, path, combiner, epoch)
}

fn insert(c: &Combiner, x: i64, fail: bool) -> impl Future<Output = Result<(), StoreError>> {
    let c = c.clone();
    async move {
        c.run(move |b| {
            b.write(|conn| {
                conn.execute("INSERT INTO t (x) VALUES (?1)", [x])
                    .map_err(super::super::db)?;
                if fail {
                    return Err(StoreError::Conflict("test"));
                }
                Ok(())
            })
        })
        .await
    }
}

fn rows(path: &std::path::Path) -> Vec<i64> {
    let conn = Connection::open(path).expect("open");
    let mut st = conn.prepare("SELECT x FROM t ORDER BY x").expect("prepare");
    let rows = st.query_map([], |r| r.get(0)).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

use std::future::Future;

#[test]
fn a_settlement_waits_for_company_only_close_behind_another_from_its_thread() {
    std::thread::spawn(|| {
        assert!(!wait_for_company(), "the first on a thread commits at once");
        assert!(wait_for_company(), "one right behind waits a turn");
        std::thread::sleep(COMMIT_COMPANY * 3);
        assert!(!wait_for_company(), "one after a pause commits at once");
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_together_share_a_commit_and_a_failing_one_rolls_back_alone() {
    let (_dir, path, c, _) = open();
    // Hold the write path while three jobs queue, so they run as one batch.
    let held = c.clone();
    let queued = c.clone();
    let (paused_tx, paused_rx) = std::sync::mpsc::channel();
    let pause = std::thread::spawn(move || {
        held.pause_writes(|| {
            paused_tx.send(()).expect("test alive");
            let deadline = Instant::now() + Duration::from_secs(5);
            while lock(&queued.shared.queues).request.len() < 3 {
                assert!(Instant::now() < deadline, "jobs never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    });
    paused_rx.recv().expect("the write path is paused");
    let (a, b, d) = tokio::join!(
        insert(&c, 1, false),
        insert(&c, 2, true),
        insert(&c, 3, false)
    );
    pause.join().expect("pause thread");
    assert!(a.is_ok() && d.is_ok());
    assert!(matches!(b, Err(StoreError::Conflict("test"))));
    assert_eq!(rows(&path), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_does_not_wedge_the_write_path() {
    let (_dir, path, c, _) = open();
    let panicking = c.clone();
    let crashed = tokio::spawn(async move {
        panicking
            .run(|b| {
                b.write(|conn| {
                    conn.execute("INSERT INTO t (x) VALUES (7)", [])
                        .map_err(super::super::db)?;
                    panic!("a job panics mid-write");
                    #[allow(unreachable_code)]
                    Ok::<(), StoreError>(())
                })
            })
            .await
    })
    .await;
    assert!(crashed.is_err(), "the job's task panicked");
    insert(&c, 8, false).await.expect("the next job runs");
    assert_eq!(rows(&path), vec![8]);
}

#[test]
fn each_thread_runs_its_own_jobs_after_a_hand_over() {
    let (_dir, path, c, _) = open();
    let (paused_tx, paused_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let held = c.clone();
    let pause = std::thread::spawn(move || {
        held.pause_writes(|| {
            paused_tx.send(()).expect("test alive");
            release_rx.recv().expect("test alive");
        })
    });
    paused_rx.recv().expect("the write path is paused");
    // Two threads, each with its own runtime, queue a job while the state is held.
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let ran_on = c
                        .run(move |b| {
                            b.write(|conn| {
                                conn.execute("INSERT INTO t (x) VALUES (?1)", [i])
                                    .map_err(super::super::db)
                            })?;
                            Ok::<_, StoreError>(std::thread::current().id())
                        })
                        .await
                        .expect("the job ran");
                    (ran_on, std::thread::current().id())
                })
            })
        })
        .collect();
    while lock(&c.shared.queues).request.len() < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    release_tx.send(()).expect("pause alive");
    pause.join().expect("pause thread");
    for w in workers {
        let (ran_on, origin) = w.join().expect("worker");
        assert_eq!(ran_on, origin, "a job runs on the thread that queued it");
    }
    assert_eq!(rows(&path), vec![0, 1]);
}

#[tokio::test]
async fn commits_by_another_connection_raise_the_epoch() {
    let (_dir, path, c, epoch) = open();
    insert(&c, 1, false).await.expect("own write");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    c.run(|_| Ok::<_, StoreError>(())).await.expect("empty job");
    let before = epoch.load(Ordering::Acquire);
    let other = Connection::open(&path).expect("open");
    other
        .execute("INSERT INTO t (x) VALUES (2)", [])
        .expect("outside write");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    c.run(|_| Ok::<_, StoreError>(())).await.expect("empty job");
    assert_eq!(epoch.load(Ordering::Acquire), before + 1);
}

thread_local! {
    /// Data-version statements this thread ran.
    pub(super) static VERSION_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn version_reads() -> u64 {
    VERSION_READS.with(std::cell::Cell::get)
}

#[tokio::test(flavor = "current_thread")]
async fn a_look_after_its_own_commit_runs_no_statement_and_an_outside_commit_still_counts() {
    let (_dir, path, c, epoch) = open();
    insert(&c, 1, false).await.expect("own write");
    // Nothing was committed since this connection's own commit: the WAL's head says so.
    tokio::time::sleep(LOOK_EVERY * 2).await;
    let reads = version_reads();
    c.refresh_epoch();
    assert_eq!(
        version_reads(),
        reads,
        "a look at an unmoved WAL head reads nothing"
    );
    let before = epoch.load(Ordering::Acquire);
    // Another process's commit moves the head: the next look reads and counts it.
    let other = Connection::open(&path).expect("open");
    other
        .execute("INSERT INTO t (x) VALUES (2)", [])
        .expect("outside write");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    c.refresh_epoch();
    assert_eq!(version_reads(), reads + 1);
    assert_eq!(epoch.load(Ordering::Acquire), before + 1);
    // Seen once, that head needs no statement either; nor does an own commit after it.
    tokio::time::sleep(LOOK_EVERY * 2).await;
    c.refresh_epoch();
    insert(&c, 3, false).await.expect("own write");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    let reads = version_reads();
    c.refresh_epoch();
    assert_eq!(version_reads(), reads);
    assert_eq!(epoch.load(Ordering::Acquire), before + 1);
    // An outside commit right after an own one, and a checkpoint that empties the WAL
    // (a new generation, the same frame count as before is possible): both count.
    insert(&c, 4, false).await.expect("own write");
    other
        .execute("INSERT INTO t (x) VALUES (5)", [])
        .expect("outside write");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    c.refresh_epoch();
    assert_eq!(epoch.load(Ordering::Acquire), before + 2);
    other
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t (x) VALUES (6);")
        .expect("outside checkpoint and write");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    c.refresh_epoch();
    assert_eq!(epoch.load(Ordering::Acquire), before + 3);
}

#[tokio::test]
async fn a_batch_looking_just_before_an_outside_commit_does_not_hide_it_from_a_request() {
    let (_dir, path, c, epoch) = open();
    let other = Connection::open(&path).expect("open");
    other
        .execute_batch("PRAGMA synchronous = OFF;")
        .expect("pragma");
    tokio::time::sleep(LOOK_EVERY * 2).await;
    // A batch looks (the periodic watcher's, say), then an operator's command commits
    // within the same millisecond, and a request reads from the cache right after.
    c.run(|_| Ok::<_, StoreError>(())).await.expect("empty job");
    let before = epoch.load(Ordering::Acquire);
    other
        .execute("INSERT INTO t (x) VALUES (2)", [])
        .expect("outside write");
    c.refresh_epoch();
    assert_eq!(epoch.load(Ordering::Acquire), before + 1);
}
