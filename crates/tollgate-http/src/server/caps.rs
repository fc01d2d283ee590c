//! Caps on open connections, in all and per peer address, so that no client (nor all of
//! them together) can take the process to its open-file limit. A connection over a cap is
//! answered with one SPEC §6 error (429 over the peer's cap, 503 over the server's) and
//! closed; the others go on being served.

use super::Limits;
use axum::Router;
use foldhash::HashMap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tollgate_core::metrics::Metrics;
use tollgate_core::throttle::LogThrottle;

/// Refused connections being answered at once; past this, a refused connection is closed
/// without an answer (each answer holds a descriptor for a moment).
const ANSWERING_MAX: usize = 64;
/// How long a refused connection is given to send its request and read the answer.
const ANSWER_TIME: Duration = Duration::from_secs(1);

/// Which cap a connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its peer address had `limit` connections open.
    PerPeer { limit: usize },
    /// The server had `limit` connections open.
    Total { limit: usize },
}

#[derive(Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

pub(crate) struct Caps {
    max_total: usize,
    max_per_peer: usize,
    open: Mutex<Open>,
    answering: AtomicUsize,
    metrics: Arc<Metrics>,
    log: LogThrottle,
    /// Answer a refused connection: one router per kind of refusal.
    per_peer_answer: Router,
    total_answer: Router,
}

/// An admitted connection's place under the caps, given back when dropped.
pub(crate) struct Slot {
    caps: Arc<Caps>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

impl Caps {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let answer = |refusal: Refusal| crate::router::refusal(refusal);
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_peer: limits.max_connections_per_peer,
            open: Mutex::new(Open::default()),
            answering: AtomicUsize::new(0),
            metrics,
            log: LogThrottle::default(),
            per_peer_answer: answer(Refusal::PerPeer {
                limit: limits.max_connections_per_peer,
            }),
            total_answer: answer(Refusal::Total {
                limit: limits.max_connections,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `peer`, or the cap it met. A cap of 0 is no cap.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.lock();
        if self.max_total > 0 && open.total >= self.max_total {
            return Err(Refusal::Total {
                limit: self.max_total,
            });
        }
        let from_peer = open.per_peer.entry(peer).or_insert(0);
        if self.max_per_peer > 0 && *from_peer >= self.max_per_peer {
            return Err(Refusal::PerPeer {
                limit: self.max_per_peer,
            });
        }
        *from_peer += 1;
        open.total += 1;
        Ok(Slot {
            caps: self.clone(),
            peer,
        })
    }

    /// Answers a refused connection with its error (or, when many are being answered
    /// already, closes it), and counts it.
    pub fn refuse(self: &Arc<Self>, stream: TcpStream, peer: IpAddr, refusal: Refusal) {
        let (counter, router, what) = match refusal {
            Refusal::PerPeer { .. } => (
                &self.metrics.refused_per_peer,
                &self.per_peer_answer,
                "its peer address's",
            ),
            Refusal::Total { .. } => (
                &self.metrics.refused_total,
                &self.total_answer,
                "the server's",
            ),
        };
        Metrics::bump(counter);
        if let Some(events) = self.log.note(what, Instant::now()) {
            tracing::warn!(%peer, ?refusal, events, "connections refused at {what} connection cap (one line per minute)");
        }
        if self.answering.fetch_add(1, Ordering::Relaxed) >= ANSWERING_MAX {
            self.answering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let caps = self.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(ANSWER_TIME);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(ANSWER_TIME, conn).await;
            caps.answering.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
