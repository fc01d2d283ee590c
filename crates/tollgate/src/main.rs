//! The tollgate binary: `serve` and the operator commands.

mod cli;
mod config;
mod control;
mod ops;
mod serve;
mod wiring;

use clap::Parser;
use cli::{Cli, Command, ConfigCmd};
use std::process::ExitCode;

/// jemalloc for Rust and (unprefixed) for SQLite: glibc's allocator made every request pay
/// for arena lock contention between the runtime's threads.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = config::Overrides {
        listen: match &cli.command {
            Command::Serve { listen } => listen.clone(),
            _ => None,
        },
        database_url: cli.global.database_url.clone(),
    };
    let config = match config::load(cli.global.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(
        &config.log_level,
        matches!(cli.command, Command::Serve { .. }),
    );
    return_memory_to_the_system();
    // `serve` runs one single-threaded runtime per worker thread (this one is the first);
    // operator commands need no more than one thread either.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { .. } => serve::run(config).await.map(|()| None),
            Command::Account(c) => ops::account(&config, c).await.map(Some),
            Command::Key(c) => ops::key(&config, c).await.map(Some),
            Command::Billing(c) => ops::billing(&config, c).await.map(Some),
            Command::Credits(c) => ops::credits(&config, c).await.map(Some),
            Command::Ledger(c) => ops::ledger(&config, c).await.map(Some),
            Command::Config(ConfigCmd::Show) => {
                println!("{config:#?}");
                Ok(None)
            }
        }
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(out)) => {
            println!("{}", out.json);
            if out.ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the books disagree where listed");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc purges freed pages only when a thread allocates again; its background threads
/// purge them after their decay time (10 s) whether or not more requests come, so the memory
/// a burst of large requests took goes back to the system.
fn return_memory_to_the_system() {
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background threads could not be started");
    }
}

fn init_tracing(level: &str, serving: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(if serving { level } else { "warn" }))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
