//! What a job sees of a batch: the book of live holds, and the write connection, through one
//! write transaction per batch (begun at the first write) and a savepoint per job.

use super::super::book::Book;
use super::super::usage_rows::{self, UsageRow};
use super::{lock, read_data_version, run_cached, saw_version};
use rusqlite::Connection;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tollgate_core::store::StoreError;
use tollgate_core::usage::{ChargeCap, UsageRecord};

/// What a job sees: the book, and the write connection through savepoints.
pub(crate) struct Batch<'a> {
    pub(super) conn: &'a Connection,
    pub(super) book: &'a Mutex<Book>,
    pub(super) txn: Txn,
    pub(super) data_version: &'a mut i64,
    /// When the write connection last looked for outside commits; a transaction's begin
    /// is such a look.
    pub(super) looked_at: &'a mut Instant,
    pub(super) epoch: &'a AtomicU64,
    /// Account balances settlements moved, written once per account before anything else
    /// touches the database and before the commit.
    pub(super) balances: Vec<(String, i64)>,
    /// Holds settled in this batch: removed from the book once the batch has committed, made
    /// live again if it does not.
    pub(super) settled: Vec<String>,
    /// Usage rows of this batch's settlements (with what each charged), written together
    /// before anything reads the database and before the commit.
    pub(super) usage: Vec<UsageRow>,
}

pub(super) enum Txn {
    NotBegun,
    Open,
    Failed(String),
}

impl<'a> Batch<'a> {
    /// The book, locked until the guard is dropped. Holds placed from the cache take the
    /// same lock, so a job's reads and updates of the book under one guard are atomic to
    /// them. Take it after [`Batch::begin`] (which may lock it itself), and never call
    /// [`Batch::begin`] while holding it.
    pub fn book(&self) -> MutexGuard<'a, Book> {
        lock(self.book)
    }

    /// Begins the batch's write transaction if it has not begun. Inside it no other
    /// connection can commit, so once the data version is checked here the book's committed
    /// figures are exact until the commit.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        if let Txn::NotBegun = self.txn {
            self.txn = match run_cached(self.conn, "BEGIN IMMEDIATE") {
                Ok(()) => match read_data_version(self.conn) {
                    Ok(v) => {
                        // No other connection commits while this transaction is open:
                        // reading the version here is a look for outside commits.
                        *self.looked_at = Instant::now();
                        saw_version(v, self.data_version, self.book, self.epoch);
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
        self.flush_deferred();
        if let Txn::Failed(e) = &self.txn {
            return Err(StoreError::Database(e.clone()).into());
        }
        let sql = |s: &str| run_cached(self.conn, s).map_err(|e| E::from(super::super::db(e)));
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

    /// Writes an account's balance before the commit (one update per account however many
    /// settlements moved it); the caller sets it in the book. Call inside the write
    /// transaction.
    pub fn defer_balance(&mut self, account_id: &str, balance: i64) {
        match self.balances.iter_mut().find(|(a, _)| a == account_id) {
            Some((_, b)) => *b = balance,
            None => self.balances.push((account_id.to_owned(), balance)),
        }
    }

    /// Writes a settlement's usage row, with the batch's other rows, before the commit; a
    /// failure to write them fails the batch.
    pub fn write_usage(&mut self, row: UsageRecord, credits: i64, capped: Option<ChargeCap>) {
        self.usage.push(UsageRow {
            row,
            credits,
            capped,
        });
    }

    /// Removes hold `id` from the book once this batch has committed; until then it stays
    /// reserved (marked as settling), and if the batch fails it is live again.
    pub fn remove_hold_on_commit(&mut self, id: &str) {
        self.settled.push(id.to_owned());
    }

    /// The write connection for reads: it sees every committed row, its own and others',
    /// and the balances this batch has moved so far.
    pub fn conn(&mut self) -> &Connection {
        self.flush_deferred();
        self.conn
    }

    pub(super) fn flush_deferred(&mut self) {
        if !self.usage.is_empty() {
            let rows = std::mem::take(&mut self.usage);
            if let Err(e) = usage_rows::insert(self.conn, &rows) {
                self.fail(&e);
            }
        }
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
            self.fail(&super::super::db(e));
        }
    }

    fn fail(&mut self, e: &StoreError) {
        tracing::error!(error = %e, "a SQLite write failed; the whole batch is rolled back");
        if !matches!(self.txn, Txn::Failed(_)) {
            self.txn = Txn::Failed(e.to_string());
        }
    }
}
