//! The single SQLite writer: one thread owns the write connection and runs queued jobs in
//! group-committed transactions, each job inside its own savepoint.
//!
//! A job's result reaches its caller only after the transaction that contains it committed,
//! so a caller never sees a write that could still roll back. Under load many holds and
//! settlements share one commit; alone, a job commits by itself at once.
//!
//! Jobs come in two lanes. Request-path jobs (holds, settlements) always go first and
//! commit together; background jobs (usage-log batches) run one at a time, each in its own
//! transaction, only when no request-path job waits, so a large log batch never delays a
//! request by more than one small chunk.

use rusqlite::Connection;
use std::collections::VecDeque;
use std::sync::mpsc;
use tokio::sync::oneshot;
use tollgate_core::store::StoreError;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 256;

/// Called after the commit with its outcome; sends the job's result to its caller.
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
/// Runs inside the open transaction (or learns that none could be opened).
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Completion + Send>;

/// Which queue a job joins.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// On a request's path: first, group-committed.
    Request,
    /// Off the path: one per transaction, when the request lane is empty.
    Background,
}

#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<(Lane, Job)>,
}

impl Writer {
    /// Starts the writer thread; it ends when the last `Writer` is dropped.
    pub fn start(conn: Connection) -> Self {
        let (tx, rx) = mpsc::channel::<(Lane, Job)>();
        std::thread::Builder::new()
            .name("tollgate-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .expect("the SQLite writer thread starts");
        Self { jobs: tx }
    }

    /// Runs `f` in a write transaction and returns its result once committed. An `Err` from
    /// `f` rolls back only `f`'s own writes.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.write_in(Lane::Request, f).await
    }

    /// Like [`Writer::write`], in the chosen lane.
    pub async fn write_in<T, E, F>(&self, lane: Lane, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let outcome = match conn {
                Ok(conn) => in_savepoint(conn, f),
                Err(e) => Err(StoreError::Database(e.to_owned()).into()),
            };
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
        self.jobs
            .send((lane, job))
            .map_err(|_| StoreError::Database("the SQLite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Database("the SQLite writer dropped a job".into()))?
    }
}

fn in_savepoint<T, E, F>(conn: &Connection, f: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&Connection) -> Result<T, E>,
{
    let sql = |s: &str| {
        conn.prepare_cached(s)
            .and_then(|mut st| st.execute([]))
            .map(drop)
            .map_err(|e| E::from(super::db(e)))
    };
    sql("SAVEPOINT job")?;
    match f(conn) {
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

/// Runs a parameterless statement through the statement cache (no re-parsing per batch).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn run(conn: Connection, rx: mpsc::Receiver<(Lane, Job)>) {
    let mut request: Vec<Job> = Vec::new();
    let mut background: VecDeque<Job> = VecDeque::new();
    let push = |(lane, job): (Lane, Job),
                request: &mut Vec<Job>,
                background: &mut VecDeque<Job>| match lane {
        Lane::Request => request.push(job),
        Lane::Background => background.push_back(job),
    };
    loop {
        if request.is_empty() && background.is_empty() {
            match rx.recv() {
                Ok(item) => push(item, &mut request, &mut background),
                Err(_) => return,
            }
        }
        while request.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => push(item, &mut request, &mut background),
                Err(_) => break,
            }
        }
        if !request.is_empty() {
            commit(&conn, std::mem::take(&mut request));
        } else if let Some(job) = background.pop_front() {
            commit(&conn, vec![job]);
        }
    }
}

/// Runs `jobs` in one transaction and answers each after the commit.
fn commit(conn: &Connection, jobs: Vec<Job>) {
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        let msg = e.to_string();
        tracing::error!(error = %msg, "SQLite write transaction could not begin");
        for job in jobs {
            job(Err(&msg))(Some(&msg));
        }
        return;
    }
    let completions: Vec<Completion> = jobs.into_iter().map(|job| job(Ok(conn))).collect();
    let committed = run_cached(conn, "COMMIT").map_err(|e| e.to_string());
    if let Err(e) = &committed {
        tracing::error!(error = %e, "SQLite commit failed; rolling back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    let error = committed.err();
    for done in completions {
        done(error.as_deref());
    }
}
