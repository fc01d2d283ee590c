//! The load generator: worker tasks on a few OS threads, each with its own current-thread runtime.

pub mod cli;
pub mod closed;
pub mod open;
pub mod slow;

use crate::hist::Hist;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;
use tokio::task::{JoinHandle, LocalSet};

/// A point in a run where the caller measures the processes under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The measured window begins (after warm-up, or once every slow stream is open).
    Start,
    /// The measured window ends.
    End,
}

/// What one run measured, merged over every worker.
#[derive(Clone, Default)]
pub struct Outcome {
    /// Successful replies inside the measured window.
    pub completed: u64,
    /// Successful replies at any time (warm-up included): each one must have been charged.
    pub ok_total: u64,
    /// Failed requests at any time (warm-up included).
    pub errors: u64,
    /// Fixed rate: scheduled requests never sent because the server fell too far behind.
    pub unsent: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// Time to the last body byte.
    pub latency: Hist,
    /// Time to the first body byte.
    pub ttfb: Hist,
    /// tollgate's own part of the time before each reply's head (its `Server-Timing`);
    /// empty against the mock.
    pub gateway: Hist,
    /// Length of the measured window.
    pub window: Duration,
    /// Slow streams: streams that received their first bytes.
    pub opened: u64,
    /// Slow streams: streams open when the window started, and the fewest open during it.
    pub open_at_start: u64,
    pub min_open: u64,
}

impl Outcome {
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    pub fn merge(&mut self, o: Outcome) {
        self.completed += o.completed;
        self.ok_total += o.ok_total;
        self.errors += o.errors;
        self.unsent += o.unsent;
        for m in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&m) {
                self.error_samples.push(m);
            }
        }
        self.latency.add(&o.latency);
        self.ttfb.add(&o.ttfb);
        self.gateway.add(&o.gateway);
        self.opened += o.opened;
    }

    /// Successful replies per second over the measured window.
    pub fn rps(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// What the workers of one thread record into (they run on that thread only).
pub(crate) type Shared = Rc<RefCell<Outcome>>;

/// Runs `make(thread, shared)` on each of `threads` OS threads (a current-thread runtime and
/// a `LocalSet` each, so workers share one `Outcome` per thread) while the calling thread
/// runs `coordinate`; returns the merged outcomes.
pub(crate) fn on_threads<M, F>(threads: usize, make: M, coordinate: impl FnOnce()) -> Outcome
where
    M: Fn(usize, Shared) -> F + Send + Clone + 'static,
    F: Future<Output = ()> + 'static,
{
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let make = make.clone();
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime");
                    let shared = Shared::default();
                    LocalSet::new().block_on(&rt, make(t, shared.clone()));
                    let out = shared.borrow().clone();
                    out
                })
                .expect("a load thread")
        })
        .collect();
    coordinate();
    let mut out = Outcome::default();
    for h in handles {
        match h.join() {
            Ok(o) => out.merge(o),
            Err(_) => out.error("a load thread panicked".into()),
        }
    }
    out
}

/// Awaits the workers spawned on this thread.
pub(crate) async fn join(workers: Vec<JoinHandle<()>>, out: &Shared) {
    for w in workers {
        if let Err(e) = w.await {
            out.borrow_mut().error(format!("a worker failed: {e}"));
        }
    }
}

/// The share of `total` workers that thread `t` of `threads` runs.
pub(crate) fn share(total: usize, threads: usize, t: usize) -> impl Iterator<Item = usize> {
    (0..total).filter(move |i| i % threads.max(1) == t)
}

/// Sleeps the calling (coordinating) thread until `at`.
/// Runs `make` on `threads` load threads while this thread marks the measured window
/// (`begin`..`end`); the outcome's window is `end - begin`.
pub(crate) fn measured<M, F>(
    threads: usize,
    make: M,
    begin: std::time::Instant,
    end: std::time::Instant,
    mark: &mut dyn FnMut(Mark),
) -> Outcome
where
    M: Fn(usize, Shared) -> F + Send + Clone + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut out = on_threads(threads, make, || {
        sleep_until(begin);
        mark(Mark::Start);
        sleep_until(end);
        mark(Mark::End);
    });
    out.window = end - begin;
    out
}

pub(crate) fn sleep_until(at: std::time::Instant) {
    let now = std::time::Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}
