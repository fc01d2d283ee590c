//! The write side of the SQLite store: one write connection and the book of live holds,
//! used by whichever caller finds them free (flat combining), with group commit.
//!
//! A caller queues its job and tries to take the write state. The one that gets it runs
//! every queued job, its own and the others', in one transaction, commits, and answers each
//! job after the commit; callers that did not get it simply wait for their answer. There is
//! no writer thread to wake: alone, a request runs its own job on its own thread at once;
//! under load, jobs queued while one batch commits share the next commit.
//!
//! A job reaches the database only through [`Batch::write`], each call inside its own
//! savepoint, and the transaction begins at the first such call: a batch of memory-only
//! jobs (holds) commits nothing. A job's result reaches its caller only after the
//! transaction that contains it committed, so no caller sees a write that could roll back.
//!
//! Jobs come in two lanes. Request-path jobs always go first and commit together;
//! background jobs (usage-log chunks) run one per transaction when no request job waits.

use super::book::Book;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tollgate_core::store::StoreError;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 256;
/// Looks for outside commits at most this often (each look is a statement, a few µs).
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// Called after the commit with its outcome; sends the job's result to its caller.
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&mut Batch<'_>) -> Completion + Send>;

/// Which queue a job joins.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// On a request's path: first, group-committed.
    Request,
    /// On a request's path, a job that commits (a settlement): it joins the request queue
    /// but lets the other tasks of its thread run first, so that the settlements they reach
    /// share its commit.
    Commit,
    /// Off the path: one per transaction, when the request lane is empty.
    Background,
}

struct State {
    conn: Connection,
    book: Book,
    /// The write connection's `PRAGMA data_version` when last read: it changes only when
    /// another connection (another process) commits.
    data_version: i64,
    looked_at: Instant,
}

#[derive(Default)]
struct Queues {
    request: Vec<Job>,
    background: VecDeque<Job>,
}

struct Shared {
    state: Mutex<State>,
    queues: Mutex<Queues>,
    /// Bumped whenever committed rows may have changed outside the book's knowledge; caches
    /// of committed rows (the key cache) compare it.
    epoch: Arc<AtomicU64>,
}

#[derive(Clone)]
pub(crate) struct Combiner {
    shared: Arc<Shared>,
}

/// What a job sees: the book, and the write connection through savepoints.
pub(crate) struct Batch<'a> {
    conn: &'a Connection,
    pub book: &'a mut Book,
    txn: Txn,
    data_version: &'a mut i64,
    epoch: &'a AtomicU64,
    /// Account balances settlements moved, written once per account before anything else
    /// touches the database and before the commit.
    balances: Vec<(String, i64)>,
}

enum Txn {
    NotBegun,
    Open,
    Failed(String),
}

/// The write state if no one else has it. A panic in an earlier job poisons nothing that
/// matters: an open transaction is rolled back at the next batch.
fn try_lock(m: &Mutex<State>) -> Option<MutexGuard<'_, State>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A job that panicked left no half-done state behind: every job's database writes are
    // in a savepoint, and the book is updated only after they succeeded.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Combiner {
    pub fn new(conn: Connection, epoch: Arc<AtomicU64>) -> Self {
        let data_version = read_data_version(&conn).unwrap_or(0);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    conn,
                    book: Book::default(),
                    data_version,
                    looked_at: Instant::now(),
                }),
                queues: Mutex::new(Queues::default()),
                epoch,
            }),
        }
    }

    /// Runs `f` in the request lane and returns its result once its batch committed.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, E> + Send + 'static,
    {
        self.run_in(Lane::Request, f).await
    }

    /// Like [`Combiner::run`], in the chosen lane.
    pub async fn run_in<T, E, F>(&self, lane: Lane, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |batch| {
            let outcome = f(batch);
            Box::new(move |commit_error: Option<&str>| {
                let result = match (commit_error, outcome) {
                    (Some(e), Ok(_)) => {
                        Err(StoreError::Database(format!("commit failed: {e}")).into())
                    }
                    (_, outcome) => outcome,
                };
                let _ = tx.send(result);
            })
        });
        {
            let mut q = lock(&self.shared.queues);
            match lane {
                Lane::Request | Lane::Commit => q.request.push(job),
                Lane::Background => q.background.push_back(job),
            }
        }
        if lane == Lane::Commit {
            tokio::task::yield_now().await;
        }
        self.combine();
        rx.await
            .map_err(|_| StoreError::Database("the SQLite writer dropped a job".into()))?
    }

    /// Runs queued jobs while the write state is free and jobs wait. Whoever holds the state
    /// looks at the queue again after letting it go, so no queued job is left behind.
    fn combine(&self) {
        loop {
            let Some(mut state) = try_lock(&self.shared.state) else {
                return;
            };
            loop {
                let jobs = {
                    let mut q = lock(&self.shared.queues);
                    if !q.request.is_empty() {
                        let n = q.request.len().min(MAX_BATCH);
                        q.request.drain(..n).collect::<Vec<_>>()
                    } else if let Some(job) = q.background.pop_front() {
                        vec![job]
                    } else {
                        break;
                    }
                };
                self.run_batch(&mut state, jobs);
            }
            drop(state);
            let q = lock(&self.shared.queues);
            if q.request.is_empty() && q.background.is_empty() {
                return;
            }
        }
    }

    fn run_batch(&self, state: &mut State, jobs: Vec<Job>) {
        if !state.conn.is_autocommit() {
            // A job panicked mid-batch and left its transaction open: undo it, and read the
            // committed figures again.
            tracing::error!("a SQLite write batch was interrupted; rolling it back");
            let _ = state.conn.execute_batch("ROLLBACK");
            state.book.forget_committed();
        }
        self.look_outside(state);
        let State {
            conn,
            book,
            data_version,
            ..
        } = state;
        let mut batch = Batch {
            conn,
            book,
            txn: Txn::NotBegun,
            data_version,
            epoch: &self.shared.epoch,
            balances: Vec::new(),
        };
        let completions: Vec<Completion> = jobs.into_iter().map(|job| job(&mut batch)).collect();
        batch.flush_balances();
        let error = match batch.txn {
            Txn::NotBegun => None,
            Txn::Failed(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                book.forget_committed();
                Some(e)
            }
            Txn::Open => match run_cached(conn, "COMMIT") {
                Ok(()) => None,
                Err(e) => {
                    let e = e.to_string();
                    tracing::error!(error = %e, "SQLite commit failed; rolling back");
                    let _ = conn.execute_batch("ROLLBACK");
                    // The book already counted this batch's writes: read them again.
                    book.forget_committed();
                    Some(e)
                }
            },
        };
        for done in completions {
            done(error.as_deref());
        }
    }

    /// Forgets cached committed figures and raises the epoch if another connection
    /// committed since the last look (looking at most every [`LOOK_EVERY`]).
    fn look_outside(&self, state: &mut State) {
        let now = Instant::now();
        if now.duration_since(state.looked_at) < LOOK_EVERY {
            return;
        }
        state.looked_at = now;
        match read_data_version(&state.conn) {
            Ok(v) if v != state.data_version => {
                state.data_version = v;
                state.book.forget_committed();
                self.shared.epoch.fetch_add(1, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the SQLite data version failed"),
        }
    }

    /// Brings the epoch up to date before a cached read. When a batch is running it has just
    /// looked (at its start), so this only looks itself when the write path is idle. Either
    /// way, what another process committed counts within a millisecond.
    pub fn refresh_epoch(&self) {
        let Some(mut state) = try_lock(&self.shared.state) else {
            return;
        };
        self.look_outside(&mut state);
        drop(state);
        // Jobs queued while this held the state are run by whoever looks next: this caller.
        self.combine();
    }

    /// Runs `f` while no batch runs (jobs queue meanwhile), then runs what queued.
    pub fn pause_writes<R>(&self, f: impl FnOnce() -> R) -> R {
        let state = lock(&self.shared.state);
        let result = f();
        drop(state);
        self.combine();
        result
    }

    /// Looks every `every` for commits by other connections (an empty job: each batch
    /// looks), so the epoch follows them even when no request writes. Stops with the store.
    pub fn watch_outside_commits(&self, every: std::time::Duration) {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                let combiner = Combiner { shared };
                let _ = combiner.run(|_| Ok::<_, StoreError>(())).await;
            }
        });
    }
}

impl Batch<'_> {
    /// Begins the batch's write transaction if it has not begun. Inside it no other
    /// connection can commit, so once the data version is checked here the book's committed
    /// figures are exact until the commit.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        if let Txn::NotBegun = self.txn {
            self.txn = match run_cached(self.conn, "BEGIN IMMEDIATE") {
                Ok(()) => match read_data_version(self.conn) {
                    Ok(v) => {
                        if v != *self.data_version {
                            *self.data_version = v;
                            self.book.forget_committed();
                            self.epoch.fetch_add(1, Ordering::Release);
                        }
                        Txn::Open
                    }
                    Err(e) => Txn::Failed(e.to_string()),
                },
                Err(e) => {
                    tracing::error!(error = %e, "SQLite write transaction could not begin");
                    Txn::Failed(e.to_string())
                }
            };
        }
        match &self.txn {
            Txn::Failed(e) => Err(StoreError::Database(e.clone())),
            _ => Ok(()),
        }
    }

    /// Runs `f` inside its own savepoint of the batch's write transaction, beginning the
    /// transaction on first use. An `Err` from `f` rolls back only `f`'s own writes.
    pub fn write<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Connection) -> Result<T, E>,
    {
        self.begin()?;
        self.flush_balances();
        if let Txn::Failed(e) = &self.txn {
            return Err(StoreError::Database(e.clone()).into());
        }
        let sql = |s: &str| run_cached(self.conn, s).map_err(|e| E::from(super::db(e)));
        sql("SAVEPOINT job")?;
        match f(self.conn) {
            Ok(v) => {
                sql("RELEASE job")?;
                Ok(v)
            }
            Err(e) => {
                sql("ROLLBACK TO job")?;
                sql("RELEASE job")?;
                Err(e)
            }
        }
    }

    /// Runs `f` in the batch's write transaction without a savepoint of its own, for a job
    /// whose statements fail only when the database does: an `Err` from `f` fails the whole
    /// batch (it is rolled back and every job in it reports the error).
    pub fn write_all_or_nothing<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.begin()?;
        match f(self.conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Sets an account's balance in the book and writes it before the commit (one update
    /// per account however many settlements moved it). Call inside the write transaction.
    pub fn defer_balance(&mut self, account_id: &str, balance: i64) {
        self.book.set_balance(account_id, balance);
        match self.balances.iter_mut().find(|(a, _)| a == account_id) {
            Some((_, b)) => *b = balance,
            None => self.balances.push((account_id.to_owned(), balance)),
        }
    }

    /// The write connection for reads: it sees every committed row, its own and others',
    /// and the balances this batch has moved so far.
    pub fn conn(&mut self) -> &Connection {
        self.flush_balances();
        self.conn
    }

    fn flush_balances(&mut self) {
        if self.balances.is_empty() {
            return;
        }
        let balances = std::mem::take(&mut self.balances);
        let written = self
            .conn
            .prepare_cached("UPDATE accounts SET balance = ?1 WHERE id = ?2")
            .and_then(|mut st| {
                for (account, balance) in &balances {
                    st.execute(rusqlite::params![balance, account])?;
                }
                Ok(())
            });
        if let Err(e) = written {
            self.fail(&super::db(e));
        }
    }

    fn fail(&mut self, e: &StoreError) {
        tracing::error!(error = %e, "a SQLite write failed; the whole batch is rolled back");
        if !matches!(self.txn, Txn::Failed(_)) {
            self.txn = Txn::Failed(e.to_string());
        }
    }
}

/// Runs a parameterless statement through the statement cache (no re-parsing per batch).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn read_data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Combiner,
        Arc<AtomicU64>,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).expect("open");
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
}
