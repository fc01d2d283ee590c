//! The connection loop: an acceptor admits each connection under the connection caps and
//! hands it to the least busy of N worker threads, each running its own single-threaded
//! runtime that serves the router on it (HTTP/1.1 and cleartext HTTP/2) with lean
//! per-connection buffers; and the shutdown that drains them.
//!
//! A connection, and every task its requests spawn (the upstream connection included, see
//! `tollgate_providers::http`), stays on one thread: no work-stealing, no wake-up that
//! crosses threads on the request path. hyper's defaults let an HTTP/1 connection's read
//! buffer grow to 400 KiB and a client take forever to send its first byte or its headers;
//! a gateway holding thousands of streams open wants neither, so the buffer limit and the
//! deadlines ([`Limits`]) are set here.
//!
//! Layout: [`caps`] (connections in all and per peer address), [`io`] (hyper's own error
//! answers given the SPEC §6 body).

mod caps;
mod io;

pub use caps::Refusal;

use axum::Router;
use caps::{Caps, Slot};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_core::metrics::Metrics;

/// Most bytes of one request head (and of one read); hyper's smallest allowed limit is 8 KiB.
pub(crate) const MAX_BUF: usize = 16 * 1024;

/// What a connection may take before it is closed, and how many may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the connection's opening to its first byte.
    pub first_byte: Duration,
    /// For a whole request head, counted from when the connection is ready for one (an idle
    /// keep-alive connection is closed after this too).
    pub header: Duration,
    /// Open connections in all; 0 is no cap.
    pub max_connections: usize,
    /// Open connections from one peer address; 0 is no cap.
    pub max_connections_per_peer: usize,
}

/// A connection handed to a worker, with its place under the caps.
struct Handed {
    stream: std::net::TcpStream,
    slot: Slot,
}

/// Where the server is in its life; workers watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// No new connections; open ones finish their in-flight requests.
    Draining,
    /// The grace period is over: open connections are dropped (their requests settle for
    /// what was delivered).
    Cut,
    /// Workers stop their runtimes.
    Exit,
}

/// One worker as the acceptor sees it.
struct Seat {
    inbox: mpsc::UnboundedSender<Handed>,
    open: Arc<AtomicUsize>,
}

/// A running server: its acceptor and worker threads.
pub struct Server {
    phase: watch::Sender<Phase>,
    /// One message per worker whose connections have all ended.
    finished: mpsc::UnboundedReceiver<()>,
    finished_count: usize,
    workers: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `app` on `listener` from `workers` threads (at least one). The first worker and
    /// the acceptor run on the calling runtime; the others each start a thread of their own.
    pub fn start(
        listener: TcpListener,
        app: Router,
        workers: usize,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (phase, _) = watch::channel(Phase::Serving);
        let (finished_tx, finished) = mpsc::unbounded_channel();
        let mut seats = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers - 1);
        for i in 0..workers {
            let (inbox, rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            seats.push(Seat {
                inbox,
                open: open.clone(),
            });
            let run = worker(
                rx,
                app.clone(),
                limits,
                open,
                phase.subscribe(),
                finished_tx.clone(),
            );
            if i == 0 {
                tokio::spawn(run);
                continue;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("tollgate-worker-{i}"))
                    .spawn(move || runtime.block_on(run))?,
            );
        }
        let caps = Caps::new(&limits, metrics);
        tokio::spawn(accept(listener, seats, caps, phase.subscribe()));
        Ok(Self {
            phase,
            finished,
            finished_count: 0,
            workers,
            threads,
        })
    }

    /// Stops accepting and lets open connections finish their in-flight requests for up to
    /// `grace`. Returns whether every connection finished in time; if not, [`Server::cut`]
    /// drops the rest.
    pub async fn drain(&mut self, grace: Duration) -> bool {
        self.phase.send_replace(Phase::Draining);
        tokio::time::timeout(grace, self.wait_finished())
            .await
            .is_ok()
    }

    /// Drops the connections still open after [`Server::drain`] (their requests settle for
    /// what was delivered) and waits until they are gone.
    pub async fn cut(&mut self) {
        self.phase.send_replace(Phase::Cut);
        self.wait_finished().await;
    }

    /// Stops the worker threads; call once settlements have finished.
    pub async fn exit(self) {
        self.phase.send_replace(Phase::Exit);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a server worker thread panicked");
                }
            }
        });
        let _ = joined.await;
    }

    async fn wait_finished(&mut self) {
        while self.finished_count < self.workers {
            if self.finished.recv().await.is_none() {
                return;
            }
            self.finished_count += 1;
        }
    }
}

/// Accepts connections, refuses those over a cap, and hands each other to the worker with
/// the fewest open ones.
async fn accept(
    listener: TcpListener,
    seats: Vec<Seat>,
    caps: Arc<Caps>,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait for connections to close.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let slot = match caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                caps.refuse(stream, peer.ip(), refusal);
                continue;
            }
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to a worker");
                continue;
            }
        };
        let seat = seats
            .iter()
            .min_by_key(|s| s.open.load(Ordering::Relaxed))
            .expect("a server has at least one worker");
        seat.open.fetch_add(1, Ordering::Relaxed);
        if seat.inbox.send(Handed { stream, slot }).is_err() {
            seat.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether the connection's first byte arrives within `deadline` (and before it closes).
async fn first_byte(stream: &tokio::net::TcpStream, deadline: Duration) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        tokio::time::timeout(deadline, stream.peek(&mut probe)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// One worker: serves the connections it is handed until the server drains, then reports
/// when they have all ended, and keeps its runtime (and the settlements it runs) alive until
/// the server exits.
async fn worker(
    mut inbox: mpsc::UnboundedReceiver<Handed>,
    app: Router,
    limits: Limits,
    open: Arc<AtomicUsize>,
    mut phase: watch::Receiver<Phase>,
    finished: mpsc::UnboundedSender<()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .max_buf_size(MAX_BUF);
    let graceful = GracefulShutdown::new();
    let conns = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        let stream = tokio::select! {
            stream = inbox.recv() => stream,
            _ = phase.wait_for(|p| *p >= Phase::Draining) => None,
        };
        let Some(Handed { stream, slot }) = stream else {
            break;
        };
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "could not register a connection");
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let (open, cut) = (open.clone(), cut.clone());
        let (builder, watcher, mut draining) = (builder.clone(), graceful.watcher(), phase.clone());
        conns.spawn(async move {
            // A connection that sends nothing is closed at the first-byte deadline (hyper's
            // own deadline starts with the first byte of a request head), or when the server
            // starts draining before it has sent anything.
            let spoke = tokio::select! {
                spoke = first_byte(&stream, limits.first_byte) => spoke,
                _ = draining.wait_for(|p| *p >= Phase::Draining) => false,
            };
            if spoke {
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(io::ServedIo::new(stream)),
                        service,
                    )
                    .into_owned();
                let conn = watcher.watch(conn);
                tokio::select! {
                    result = conn => if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    },
                    () = cut.cancelled() => {}
                }
            }
            drop(slot);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(inbox);
    conns.close();
    let ended = graceful.shutdown();
    tokio::select! {
        () = ended => {}
        _ = phase.wait_for(|p| *p >= Phase::Cut) => cut.cancel(),
    }
    conns.wait().await;
    let _ = finished.send(());
    let _ = phase.wait_for(|p| *p >= Phase::Exit).await;
}
