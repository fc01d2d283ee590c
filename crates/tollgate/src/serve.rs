//! `tollgate serve`: start, serve, and shut down without losing a settlement.

use crate::config::Config;
use crate::wiring;
use std::time::Duration;
use tokio_util::task::TaskTracker;
use tollgate_core::metrics::Metrics;
use tollgate_core::relay::Relay;
use tollgate_http::AppState;

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let open_files = raise_open_files();
    if config.connections.max_connections == 0 {
        config.connections.max_connections = crate::config::connection_cap(open_files);
    }
    tollgate_core::relay::warm_up();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    config.settings.node_id = crate::config::node_id_for(&config.settings.node_id, addr.port());
    let store = wiring::store(&config).await?;
    store.claim_serving(&config.settings.node_id).await?;
    let released = store.release_node_holds(&config.settings.node_id).await?;
    if released > 0 {
        tracing::warn!(released, node = %config.settings.node_id, "released holds left by this node's previous run (nothing charged)");
    }
    let registry = wiring::providers(&config)?;
    let catalog = wiring::catalog(&config, &registry)?;
    tracing::info!(models = catalog.models().len(), "catalogue loaded");
    let tasks = TaskTracker::new();
    let metrics = std::sync::Arc::new(Metrics::default());
    let relay = Relay::new(
        store.clone(),
        std::sync::Arc::new(catalog),
        registry,
        config.settings.clone(),
        tasks.clone(),
        metrics.clone(),
    );
    let leases = tokio::spawn(relay.clone().keep_leases());
    let accounts = wiring::accounts(&config, store.clone());
    // Operator commands that must see this process's live holds come in here.
    let _control = match store.control_socket() {
        Some(path) => Some(crate::control::listen(
            path,
            accounts.clone(),
            std::sync::Arc::new(wiring::full_catalog(&config)?),
        )?),
        None => None,
    };
    let app = tollgate_http::router(AppState::new(relay.clone(), accounts, config.body));

    let reaper = tokio::spawn(reap(store.clone(), config.reaper_interval));
    let mut server = tollgate_http::server::Server::start(
        listener,
        app,
        config.threads,
        config.connections,
        metrics,
    )?;
    tracing::info!(
        %addr, node = %config.settings.node_id, threads = config.threads, database = %config.database_url,
        max_connections = config.connections.max_connections,
        max_connections_per_peer = config.connections.max_connections_per_peer,
        "tollgate listening on http://{addr}"
    );
    shutdown_signal().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: no new connections; finishing in-flight requests");
    if !server.drain(config.shutdown_grace).await {
        tracing::warn!("grace period over; cutting the remaining connections (their holds are released or charged for what was delivered)");
        relay.begin_cut();
        server.cut().await;
    }
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::error!("settlements still running at exit; their holds lapse with their lease");
    }
    server.exit().await;
    reaper.abort();
    leases.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Raises the soft open-file limit to the hard one and returns it. A stream holds two
/// descriptors (the client's socket and the upstream's), so the soft limit many systems
/// start a process with (1,024) would turn connections away at about 500 concurrent streams.
fn raise_open_files() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit");
            limit
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::Resource::NOFILE
                .get()
                .map_or(1_024, |(soft, _)| soft)
        }
    }
}

async fn reap(store: std::sync::Arc<dyn tollgate_core::store::Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match store.release_expired_holds(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                released = n,
                "released holds whose lease expired (nothing charged)"
            ),
            Err(e) => tracing::error!(error = %e, "releasing expired holds failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
