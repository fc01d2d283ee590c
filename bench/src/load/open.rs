//! Fixed-rate open loop with coordinated-omission correction: latency runs from each request's
//! scheduled send time whenever the request could not be sent on time.

use super::{join, measured, share, Mark, Outcome, Shared};
use crate::client::{Conn, Target};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Open {
    /// Requests per second, spread evenly.
    pub rate: f64,
    /// Connections (workers) available to take the schedule's slots.
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
}

/// How long requests scheduled before the end may still be sent after it.
const DRAIN: Duration = Duration::from_secs(10);

/// Sends requests to `target` at a fixed rate. Slot `i` is due at `start + i / rate`; an idle
/// worker takes the next slot and sleeps until it is due, a busy system leaves slots waiting
/// for a worker. A slot sent late because no worker was free is timed from its due time
/// (that wait is the system's doing); one a worker was waiting for is timed from the moment
/// the worker's timer fired, so the runtime's 1 ms timer granularity is not counted.
pub fn run(target: &Target, spec: Open, mark: &mut dyn FnMut(Mark)) -> Outcome {
    let start = std::time::Instant::now() + Duration::from_millis(20);
    let begin = start + spec.warmup;
    let end = begin + spec.duration;
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1e-3));
    let slots = Arc::new(AtomicU64::new(0));
    let target = target.clone();
    let threads = spec.threads;
    let make = move |t: usize, out: Shared| {
        let target = target.clone();
        let slots = slots.clone();
        async move {
            let schedule = Arc::new(Schedule {
                slots,
                start: Instant::from_std(start),
                interval,
                begin: Instant::from_std(begin),
                end: Instant::from_std(end),
            });
            let workers = share(spec.connections, threads, t)
                .map(|_| {
                    let w = worker(target.clone(), schedule.clone(), out.clone());
                    tokio::task::spawn_local(w)
                })
                .collect();
            join(workers, &out).await;
        }
    };
    measured(threads, make, begin, end, mark)
}

struct Schedule {
    slots: Arc<AtomicU64>,
    start: Instant,
    interval: Duration,
    begin: Instant,
    end: Instant,
}

async fn worker(target: Target, s: Arc<Schedule>, out: Shared) {
    let mut conn = Conn::default();
    loop {
        let i = s.slots.fetch_add(1, Ordering::Relaxed);
        let due = s.start + s.interval.mul_f64(i as f64);
        if due >= s.end {
            break;
        }
        let free_at = Instant::now();
        if free_at > s.end + DRAIN {
            out.borrow_mut().unsent += 1;
            continue;
        }
        let sent = if due > free_at {
            tokio::time::sleep_until(due).await;
            Instant::now()
        } else {
            due
        };
        let timeout = (s.end + DRAIN).saturating_duration_since(Instant::now()) + DRAIN;
        let res = conn.send(&target, timeout, || ()).await;
        let mut o = out.borrow_mut();
        match res {
            Ok(a) => {
                o.ok_total += 1;
                if due >= s.begin {
                    o.completed += 1;
                    o.latency.record(a.last - sent);
                    o.ttfb.record(a.first - sent);
                    if let Some(g) = a.gateway {
                        o.gateway.record(g);
                    }
                }
            }
            Err(e) => o.error(e),
        }
    }
}
