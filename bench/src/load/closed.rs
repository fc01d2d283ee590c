//! Closed-loop saturation: C connections, each sending its next request as soon as the last returns.

use super::{join, measured, share, Mark, Outcome, Shared};
use crate::client::{Arrival, Conn, Target};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Closed {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
}

/// Saturates `target`; latency is measured from each request's send.
pub fn run(target: &Target, spec: Closed, mark: &mut dyn FnMut(Mark)) -> Outcome {
    let begin = std::time::Instant::now() + spec.warmup;
    let end = begin + spec.duration;
    let target = target.clone();
    let threads = spec.threads;
    let make = move |t: usize, out: Shared| {
        let target = target.clone();
        async move {
            let (b, e) = (Instant::from_std(begin), Instant::from_std(end));
            let workers = share(spec.connections, threads, t)
                .map(|_| tokio::task::spawn_local(worker(target.clone(), b, e, out.clone())))
                .collect();
            join(workers, &out).await;
        }
    };
    measured(threads, make, begin, end, mark)
}

async fn worker(target: Target, begin: Instant, end: Instant, out: Shared) {
    let mut conn = Conn::default();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let timeout = (end - t0) + Duration::from_secs(10);
        let res = conn.send(&target, timeout, || ()).await;
        let failed = res.is_err();
        record(&out, res, t0, begin, end);
        if failed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn record(out: &Shared, res: Result<Arrival, String>, t0: Instant, begin: Instant, end: Instant) {
    let mut o = out.borrow_mut();
    match res {
        Ok(a) => {
            o.ok_total += 1;
            if t0 >= begin && a.last <= end {
                o.completed += 1;
                o.latency.record(a.last - t0);
                o.ttfb.record(a.first - t0);
                if let Some(g) = a.gateway {
                    o.gateway.record(g);
                }
            }
        }
        Err(e) => o.error(e),
    }
}
