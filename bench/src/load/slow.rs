//! Slow streams: K streams opened at a steady pace, each on its own connection, held open
//! while the caller measures, then read to their `[DONE]`.

use super::{join, on_threads, share, sleep_until, Mark, Outcome, Shared};
use crate::client::{Conn, Target};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Slow {
    pub streams: usize,
    /// New streams opened per second.
    pub ramp_per_sec: f64,
    /// The measured window, once every stream is open (or the ramp gave up waiting).
    pub hold: Duration,
    /// A stream that has not finished this long after it was opened fails.
    pub stream_timeout: Duration,
    pub threads: usize,
}

/// How long after the ramp the window waits for streams still opening.
const OPEN_GRACE: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    open_now: AtomicU64,
    /// Streams that ended without ever receiving a byte.
    never_opened: AtomicU64,
}

pub fn run(target: &Target, spec: Slow, mark: &mut dyn FnMut(Mark)) -> Outcome {
    let start = std::time::Instant::now() + Duration::from_millis(20);
    let pace = Duration::from_secs_f64(1.0 / spec.ramp_per_sec.max(1.0));
    let counters = Arc::new(Counters::default());
    let target = target.clone();
    let threads = spec.threads;
    let c = counters.clone();
    let make = move |t: usize, out: Shared| {
        let target = target.clone();
        let c = c.clone();
        async move {
            let workers = share(spec.streams, threads, t)
                .map(|i| {
                    let at = Instant::from_std(start) + pace.mul_f64(i as f64);
                    let s = stream(
                        target.clone(),
                        at,
                        spec.stream_timeout,
                        c.clone(),
                        out.clone(),
                    );
                    tokio::task::spawn_local(s)
                })
                .collect();
            join(workers, &out).await;
        }
    };
    let (mut open_at_start, mut min_open, mut window) = (0, 0, Duration::ZERO);
    let mut out = on_threads(threads, make, || {
        let ramp_end = start + pace.mul_f64(spec.streams as f64);
        let n = spec.streams as u64;
        let settled = |c: &Counters| {
            c.opened.load(Ordering::Relaxed) + c.never_opened.load(Ordering::Relaxed) >= n
        };
        while !settled(&counters) && std::time::Instant::now() < ramp_end + OPEN_GRACE {
            std::thread::sleep(Duration::from_millis(20));
        }
        let begin = std::time::Instant::now();
        mark(Mark::Start);
        open_at_start = counters.open_now.load(Ordering::Relaxed);
        min_open = open_at_start;
        let end = begin + spec.hold;
        while std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
            min_open = min_open.min(counters.open_now.load(Ordering::Relaxed));
        }
        sleep_until(end);
        mark(Mark::End);
        window = begin.elapsed();
    });
    out.window = window;
    out.open_at_start = open_at_start;
    out.min_open = min_open;
    out
}

async fn stream(target: Target, at: Instant, timeout: Duration, c: Arc<Counters>, out: Shared) {
    tokio::time::sleep_until(at).await;
    let mut conn = Conn::default();
    let t0 = Instant::now();
    let first = std::cell::Cell::new(false);
    let res = conn
        .send(&target, timeout, || {
            first.set(true);
            c.opened.fetch_add(1, Ordering::Relaxed);
            c.open_now.fetch_add(1, Ordering::Relaxed);
        })
        .await;
    let mut o = out.borrow_mut();
    if first.get() {
        c.open_now.fetch_sub(1, Ordering::Relaxed);
        o.opened += 1;
    } else {
        c.never_opened.fetch_add(1, Ordering::Relaxed);
    }
    match res {
        Ok(a) => {
            o.completed += 1;
            o.ok_total += 1;
            o.ttfb.record(a.first - t0);
            o.latency.record(a.last - t0);
        }
        Err(e) => o.error(e),
    }
}
