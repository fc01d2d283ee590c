use super::*;
use rand::{Rng, SeedableRng};
use std::cell::Cell;

thread_local! {
    /// Writes this thread made through to the default VFS from a WAL file.
    pub(super) static WRITES: Cell<u64> = const { Cell::new(0) };
}

thread_local! {
    /// This thread's next so many writes from a WAL file fail, as a full disk's would.
    pub(super) static FAIL_WRITES: Cell<u32> = const { Cell::new(0) };
}

fn writes() -> u64 {
    WRITES.with(Cell::get)
}

fn setup(conn: &Connection) {
    conn.execute_batch(
        "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, v INTEGER NOT NULL, pad TEXT);
         CREATE INDEX IF NOT EXISTS t_v ON t(v);
         CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY, sum INTEGER NOT NULL);
         INSERT OR IGNORE INTO total VALUES (1, 0);",
    )
    .expect("schema");
}

/// A new database in a temporary directory, open through this VFS with the test schema.
fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let conn = open(&path, OpenFlags::default()).expect("open");
    setup(&conn);
    (dir, path, conn)
}

/// Commits one row of value `v` and its addition to the total.
fn add(conn: &Connection, k: &str, v: i64) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, v))?;
    tx.execute("UPDATE total SET sum = sum + ?1", [v])?;
    tx.commit()
}

/// A connection through the default VFS: it sees only what reached the file.
fn plain(path: &Path) -> Connection {
    Connection::open(path).expect("open plain")
}

fn check(conn: &Connection, rows: i64, sum: i64) {
    let (n, s): (i64, i64) = conn
        .query_row("SELECT COUNT(*), COALESCE(SUM(v), 0) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("count");
    let total: i64 = conn
        .query_row("SELECT sum FROM total", [], |r| r.get(0))
        .expect("total");
    assert_eq!((n, s, total), (rows, sum, sum));
}

#[test]
fn a_commit_of_several_pages_is_one_write() {
    let (_dir, _path, conn) = fresh();
    // Warm up past the first frames (the WAL header is written on the first commit).
    for i in 0..50 {
        conn.execute(
            "INSERT INTO t (k, v) VALUES (?1, ?2)",
            (format!("warm{i}"), i),
        )
        .expect("insert");
    }
    let before = writes();
    add(&conn, "one", 7).expect("txn");
    let frames: i64 = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .expect("wal");
    assert!(frames >= 4, "the test's commit touches several pages");
    // Table leaf, two index leaves and the total row: several frames, one write.
    assert_eq!(writes() - before, 1);
}

#[test]
fn every_commit_is_in_the_file_for_other_connections() {
    let (_dir, path, conn) = fresh();
    // A small cache makes large transactions spill uncommitted frames to the WAL.
    conn.execute_batch("PRAGMA cache_size = 20;")
        .expect("cache");
    let other = plain(&path);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut rows, mut sum) = (0i64, 0i64);
    for round in 0..300 {
        let n = match rng.gen_range(0..10) {
            0 => rng.gen_range(200..800),
            _ => rng.gen_range(1..4),
        };
        let roll_back = rng.gen_range(0..8) == 0;
        let tx = conn.unchecked_transaction().expect("begin");
        let mut added = 0;
        for i in 0..n {
            let v = rng.gen_range(1..1000);
            let pad = "x".repeat(rng.gen_range(0..600));
            tx.execute(
                "INSERT INTO t (k, v, pad) VALUES (?1, ?2, ?3)",
                (format!("r{round}-{i}-{}", rng.gen::<u64>()), v, pad),
            )
            .expect("insert");
            added += v;
        }
        tx.execute("UPDATE total SET sum = sum + ?1", [added])
            .expect("total");
        if roll_back {
            tx.rollback().expect("rollback");
        } else {
            tx.commit().expect("commit");
            rows += n;
            sum += added;
        }
        check(&other, rows, sum);
        if round % 50 == 49 {
            let _: i64 = other
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
                .expect("checkpoint");
        }
    }
    drop(conn);
    let fresh = plain(&path);
    check(&fresh, rows, sum);
    let ok: String = fresh
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(ok, "ok");
}

#[test]
fn readers_on_other_threads_never_see_a_torn_commit() {
    let (_dir, path, conn) = fresh();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let r = open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("reader");
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (s, total): (i64, i64) = r
                        .query_row(
                            "SELECT (SELECT COALESCE(SUM(v), 0) FROM t), (SELECT sum FROM total)",
                            [],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .expect("read");
                    assert_eq!(s, total, "a reader saw half a commit");
                    assert!(s >= seen, "a reader went back in time");
                    seen = s;
                }
                seen
            })
        })
        .collect();
    let mut sum = 0;
    for i in 0..2000i64 {
        add(&conn, &format!("k{i}"), i % 7 + 1).expect("commit");
        sum += i % 7 + 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader thread") <= sum);
    }
    check(&plain(&path), 2000, sum);
}

#[test]
fn a_failed_write_fails_its_commit_and_loses_nothing_committed() {
    let (_dir, path, conn) = fresh();
    for i in 0..20i64 {
        add(&conn, &format!("ok{i}"), 5).expect("txn");
    }
    check(&plain(&path), 20, 100);
    // The commit's one write (its frames, the commit frame last) fails; the next write
    // would succeed.
    FAIL_WRITES.with(|f| f.set(1));
    let failed = add(&conn, "lost", 9);
    FAIL_WRITES.with(|f| f.set(0));
    assert!(
        failed.is_err(),
        "a commit whose frames were not written must fail"
    );
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK").expect("rollback");
    }
    check(&plain(&path), 20, 100);
    check(&conn, 20, 100);
    add(&conn, "after", 3).expect("the next transaction commits");
    let fresh = plain(&path);
    check(&fresh, 21, 103);
    let ok: String = fresh
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(ok, "ok");
}

#[test]
fn the_wal_head_is_the_own_last_commit_until_another_connection_commits() {
    let (_dir, path, conn) = fresh();
    add(&conn, "a", 1).expect("commit");
    let own = last_commit(&conn);
    assert!(own.is_some());
    assert_eq!(wal_head(&conn), own);
    add(&conn, "b", 2).expect("commit");
    let next = last_commit(&conn);
    assert_ne!(next, own, "each commit leaves its own head");
    assert_eq!(wal_head(&conn), next);
    let other = plain(&path);
    add(&other, "c", 3).expect("outside commit");
    let moved = wal_head(&conn);
    assert!(moved.is_some());
    assert_ne!(moved, next);
    assert_eq!(last_commit(&conn), next);
    // A connection of the default VFS has neither.
    assert_eq!(wal_head(&other), None);
    assert_eq!(last_commit(&other), None);
}
