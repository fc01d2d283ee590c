//! The write side of the SQLite store: one write connection, used by whichever caller finds
//! it free (flat combining), with group commit; and the book of live holds, under a lock of
//! its own that a job holds from its first read of the book to its last update and never
//! across a commit, so that a hold needing no database read is placed without waiting for
//! the write path.
//!
//! A caller queues its job and tries to take the write state. The one that gets it runs the
//! queued jobs of its own thread (its *origin*) in one transaction, commits, and answers
//! each job after the commit. There is no writer thread to wake: alone, a request runs its
//! own job on its own thread at once; under load, jobs queued while one batch commits share
//! the next commit.
//!
//! A batch runs only its own origin's jobs, so a job's task is answered on the thread that
//! waits for it: with a runtime per thread, answering another thread's job would cost that
//! thread a wake-up (a system call) per job. Whoever lets the write state go looks at the
//! queue and wakes, once, the combiner task of each other origin with jobs waiting; that
//! task runs them on its own thread.
//!
//! A job reaches the database only through [`Batch`], and the transaction begins at its
//! first write: a batch of memory-only jobs (holds) commits nothing. A job's result reaches
//! its caller only after the transaction that contains it committed, so no caller sees a
//! write that could roll back.
//!

mod batch;

pub(crate) use batch::Batch;

use super::book::Book;
use super::walvfs::{self, Head};
use batch::Txn;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;
use tokio::sync::{oneshot, Notify};
use tollgate_core::store::StoreError;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 256;
/// Looks for outside commits at most this often. A look whose WAL head is one already
/// accounted for costs no system call; any other is a statement (a read transaction's
/// four lock calls).
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// A settlement queued this soon after the previous one from its thread waits a turn of the
/// thread's other tasks for company in its commit. Under load settlements come closer
/// together than this and share commits; at a moderate rate (1,000 a second per thread, a
/// millisecond apart) the turn would only delay the reply.
const COMMIT_COMPANY: Duration = Duration::from_micros(100);

thread_local! {
    /// When this thread last queued a commit-lane job.
    static LAST_COMMIT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Whether a commit-lane job queued now should wait a turn for company (and notes it).
fn wait_for_company() -> bool {
    let now = Instant::now();
    let last = LAST_COMMIT.with(|l| l.replace(Some(now)));
    last.is_some_and(|t| now.duration_since(t) < COMMIT_COMPANY)
}

/// Called after the commit with its outcome; sends the job's result to its caller.
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&mut Batch<'_>) -> Completion + Send>;

/// How a job joins the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Combined at once.
    Request,
    /// A job that commits (a settlement): when its thread settled another within
    /// [`COMMIT_COMPANY`] it lets the thread's other tasks run first, so that the
    /// settlements they reach share its commit. Alone, it commits at once.
    Commit,
}

struct State {
    conn: Connection,
    /// The write connection's `PRAGMA data_version` when last read: it changes only when
    /// another connection (another process) commits.
    data_version: i64,
    /// When the write connection last looked for outside commits (any look).
    looked_at: Instant,
    /// When a cached read ([`Combiner::refresh_epoch`]) last looked. Its looks are spaced
    /// by their own clock: a batch's look just before an outside commit must not let the
    /// next request skip the look that would see it.
    asked_at: Instant,
    /// A WAL head up to which every commit is accounted for: read just before a look that
    /// read the data version, or left by this connection's own commit (whose transaction
    /// began with such a look, under the write lock). While the WAL's head is still this
    /// one, nothing was committed since, and a look needs no statement.
    seen: Option<Head>,
}

/// The thread a job was queued from, and the task there that runs its jobs when woken.
#[derive(Clone)]
struct Origin {
    id: usize,
    wake: Arc<Notify>,
}

struct Queued {
    origin: Origin,
    job: Job,
}

#[derive(Default)]
struct Queues {
    request: Vec<Queued>,
}

impl Queues {
    /// Up to [`MAX_BATCH`] jobs of `origin`.
    fn take(&mut self, origin: usize) -> Vec<Job> {
        let mut jobs = Vec::new();
        let mut i = 0;
        while i < self.request.len() && jobs.len() < MAX_BATCH {
            if self.request[i].origin.id == origin {
                jobs.push(self.request.remove(i).job);
            } else {
                i += 1;
            }
        }
        jobs
    }

    /// The origins with a job waiting.
    fn runnable(&self) -> Vec<&Origin> {
        let mut out: Vec<&Origin> = Vec::new();
        for q in &self.request {
            if !out.iter().any(|o| o.id == q.origin.id) {
                out.push(&q.origin);
            }
        }
        out
    }
}

struct Shared {
    state: Mutex<State>,
    /// The book, under a lock of its own that is never held across a commit: a hold that
    /// needs no database read is placed without waiting for the write path.
    book: Mutex<Book>,
    queues: Mutex<Queues>,
    /// Bumped whenever committed rows may have changed outside the book's knowledge; caches
    /// of committed rows (the key cache) compare it.
    epoch: Arc<AtomicU64>,
    origins: ThreadLocal<Origin>,
    next_origin: AtomicUsize,
}

#[derive(Clone)]
pub(crate) struct Combiner {
    shared: Arc<Shared>,
}

/// A queued job not yet combined: combining happens at the latest when this is dropped, so
/// a job whose caller went away still runs.
struct CombineOnDrop {
    combiner: Combiner,
    origin: usize,
    armed: bool,
}

impl CombineOnDrop {
    fn combine(&mut self) {
        self.armed = false;
        self.combiner.combine(self.origin);
    }
}

impl Drop for CombineOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.combiner.combine(self.origin);
        }
    }
}

/// Hands the write state over when dropped while set: a job that panics must not leave the
/// other origins' jobs waiting for a hand-over that never comes.
struct HandOverOnDrop<'a>(Option<&'a Combiner>);

impl Drop for HandOverOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.hand_over(None);
        }
    }
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
    // in a savepoint (or fail the batch), and the book is updated only after they succeeded.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Combiner {
    pub fn new(conn: Connection, epoch: Arc<AtomicU64>) -> Self {
        let data_version = read_data_version(&conn).unwrap_or(0);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    conn,
                    data_version,
                    looked_at: Instant::now(),
                    asked_at: Instant::now(),
                    seen: None,
                }),
                book: Mutex::new(Book::default()),
                queues: Mutex::new(Queues::default()),
                epoch,
                origins: ThreadLocal::new(),
                next_origin: AtomicUsize::new(0),
            }),
        }
    }

    /// This thread's origin; the first use on a thread starts the task that runs the
    /// thread's jobs when another thread hands the write state over. Call within a runtime.
    fn origin(&self) -> Origin {
        self.shared
            .origins
            .get_or(|| {
                let origin = Origin {
                    id: self.shared.next_origin.fetch_add(1, Ordering::Relaxed),
                    wake: Arc::new(Notify::new()),
                };
                let (id, wake) = (origin.id, origin.wake.clone());
                let weak: Weak<Shared> = Arc::downgrade(&self.shared);
                tokio::spawn(async move {
                    loop {
                        wake.notified().await;
                        let Some(shared) = weak.upgrade() else { return };
                        Combiner { shared }.combine(id);
                    }
                });
                origin
            })
            .clone()
    }

    /// Runs `f` and returns its result once its batch committed.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit(Lane::Request, f).await
    }

    /// Queues `f` now and returns its result's future. The job runs whether or not the
    /// future is polled: it is combined before this returns (when the write state is free),
    /// except a commit-lane job waiting for company: that one when the future first yields
    /// or is dropped.
    pub fn submit<T, E, F>(
        &self,
        lane: Lane,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, E>> + Send + 'static
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
        let origin = self.origin();
        let mut pending = CombineOnDrop {
            combiner: self.clone(),
            origin: origin.id,
            armed: true,
        };
        {
            let mut q = lock(&self.shared.queues);
            q.request.push(Queued { origin, job });
        }
        if lane != Lane::Commit || !wait_for_company() {
            pending.combine();
        }
        async move {
            if pending.armed {
                tokio::task::yield_now().await;
                pending.combine();
            }
            rx.await
                .map_err(|_| StoreError::Database("the SQLite writer dropped a job".into()))?
        }
    }

    /// Runs `origin`'s queued jobs while the write state is free, then hands it over.
    fn combine(&self, origin: usize) {
        loop {
            // Declared before the state so that, if a job panics, the state is let go first.
            let mut unwinding = HandOverOnDrop(Some(self));
            let Some(mut state) = try_lock(&self.shared.state) else {
                // Its holder hands over when it lets go.
                unwinding.0 = None;
                return;
            };
            loop {
                let jobs = lock(&self.shared.queues).take(origin);
                if jobs.is_empty() {
                    break;
                }
                self.run_batch(&mut state, jobs);
            }
            drop(state);
            unwinding.0 = None;
            if !self.hand_over(Some(origin)) {
                return;
            }
        }
    }

    /// After letting the write state go: wakes every other origin with a job that could
    /// run, and says whether `me` has one (it runs it itself). A job queued after this look
    /// is run by the thread that queued it, which finds the state free or held by someone
    /// who will look again.
    fn hand_over(&self, me: Option<usize>) -> bool {
        let (mine, others) = {
            let q = lock(&self.shared.queues);
            let runnable = q.runnable();
            let mine = runnable.iter().any(|o| Some(o.id) == me);
            let others: Vec<Arc<Notify>> = runnable
                .into_iter()
                .filter(|o| Some(o.id) != me)
                .map(|o| o.wake.clone())
                .collect();
            (mine, others)
        };
        for wake in others {
            wake.notify_one();
        }
        mine
    }

    fn run_batch(&self, state: &mut State, jobs: Vec<Job>) {
        if !state.conn.is_autocommit() {
            // A job panicked mid-batch and left its transaction open: undo it, and read the
            // committed figures again.
            tracing::error!("a SQLite write batch was interrupted; rolling it back");
            let _ = state.conn.execute_batch("ROLLBACK");
            lock(&self.shared.book).forget_committed();
        }
        self.look_outside(state);
        let State {
            conn,
            data_version,
            looked_at,
            ..
        } = state;
        let book = &self.shared.book;
        let mut batch = Batch {
            conn,
            book,
            txn: Txn::NotBegun,
            data_version,
            looked_at,
            epoch: &self.shared.epoch,
            balances: Vec::new(),
            settled: Vec::new(),
            usage: Vec::new(),
        };
        let completions: Vec<Completion> = jobs.into_iter().map(|job| job(&mut batch)).collect();
        batch.flush_deferred();
        let settled = std::mem::take(&mut batch.settled);
        let error = match batch.txn {
            Txn::NotBegun => None,
            Txn::Failed(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Some(e)
            }
            Txn::Open => match run_cached(conn, "COMMIT") {
                Ok(()) => {
                    // A transaction that wrote nothing leaves an older head of this
                    // connection's: the WAL has moved past it, and the next look reads.
                    state.seen = walvfs::last_commit(conn);
                    None
                }
                Err(e) => {
                    let e = e.to_string();
                    tracing::error!(error = %e, "SQLite commit failed; rolling back");
                    let _ = conn.execute_batch("ROLLBACK");
                    Some(e)
                }
            },
        };
        {
            let mut book = lock(book);
            if error.is_some() {
                // The book already counted this batch's writes: read them again. The holds
                // its settlements were releasing stay, for their retries.
                book.forget_committed();
                for id in &settled {
                    book.abort_settling(id);
                }
            } else {
                for id in &settled {
                    book.remove(id);
                }
            }
        }
        for done in completions {
            done(error.as_deref());
        }
    }

    /// Forgets cached committed figures and raises the epoch if another connection
    /// committed since the last look (looking at most every [`LOOK_EVERY`]).
    fn look_outside(&self, state: &mut State) {
        if state.looked_at.elapsed() >= LOOK_EVERY {
            self.look(state);
        }
    }

    /// Looks for outside commits now: at the WAL's head when it is one already accounted
    /// for, else at the data version.
    fn look(&self, state: &mut State) {
        state.looked_at = Instant::now();
        let head = walvfs::wal_head(&state.conn);
        if head.is_some() && head == state.seen {
            return;
        }
        match read_data_version(&state.conn) {
            Ok(v) => {
                saw_version(
                    v,
                    &mut state.data_version,
                    &self.shared.book,
                    &self.shared.epoch,
                );
                // Read before the version: a commit after it moves the head again.
                state.seen = head;
            }
            Err(e) => {
                state.seen = None;
                tracing::warn!(error = %e, "reading the SQLite data version failed");
            }
        }
    }

    /// Brings the epoch up to date before a cached read. When a batch is running it has just
    /// looked (at its start), so this only looks itself when the write path is idle. Either
    /// way, what another process committed counts within a millisecond; a commit made while
    /// no request came (an operator's command) counts at the next request.
    pub fn refresh_epoch(&self) {
        let Some(mut state) = try_lock(&self.shared.state) else {
            return;
        };
        if state.asked_at.elapsed() >= LOOK_EVERY {
            state.asked_at = Instant::now();
            self.look(&mut state);
        }
        drop(state);
        // Jobs queued while this held the state: their origins are woken.
        self.hand_over(None);
    }

    /// Runs `f` on the book alone, without the write path: for a hold whose figures are all
    /// cached. It waits at most for a job's own statements, never for a commit.
    pub fn with_book<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        f(&mut lock(&self.shared.book))
    }

    /// Runs `f` while no batch runs (jobs queue meanwhile), then runs what queued.
    pub fn pause_writes<R>(&self, f: impl FnOnce() -> R) -> R {
        let state = lock(&self.shared.state);
        let result = f();
        drop(state);
        self.hand_over(None);
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

/// Runs a parameterless statement through the statement cache (no re-parsing per batch).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Takes the data version `v` read at a look: when it moved, another connection committed,
/// so the book's cached committed figures are forgotten and the epoch is raised.
fn saw_version(v: i64, seen: &mut i64, book: &Mutex<Book>, epoch: &AtomicU64) {
    if v != *seen {
        *seen = v;
        lock(book).forget_committed();
        epoch.fetch_add(1, Ordering::Release);
    }
}

fn read_data_version(conn: &Connection) -> rusqlite::Result<i64> {
    #[cfg(test)]
    tests::VERSION_READS.with(|n| n.set(n.get() + 1));
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

#[cfg(test)]
mod tests;
