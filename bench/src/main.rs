//! tollgate-bench: a mock OpenAI upstream, a load generator, and the runner that measures
//! tollgate against the mock with billing on and writes docs/benchmarks.md.

mod client;
mod hist;
mod load;
mod machine;
mod measure;
mod mock;
mod mock_body;
mod procs;
mod procstat;
mod proxy;
mod report;
mod results;
mod runner;
mod scenarios;
mod seed;
mod targets;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tollgate-bench", about = "Benchmark harness for tollgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mock OpenAI upstream.
    Mock(mock::MockArgs),
    /// Drive one load against an address and print its figures.
    Load(load::cli::LoadArgs),
    /// Run every scenario and write docs/benchmarks.md.
    Run(runner::RunArgs),
    /// The ten-second miniature of `run` (same as `run --smoke`).
    Smoke {
        /// The tollgate binary under test [default: <workspace>/target/release/tollgate].
        #[arg(long)]
        tollgate: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mock(args) => mock::serve(args),
        Command::Load(args) => load::cli::run(args),
        Command::Run(args) => runner::run(args),
        Command::Smoke { tollgate } => runner::run(runner::RunArgs {
            tollgate,
            out: None,
            smoke: true,
            reps: None,
            only: Vec::new(),
        }),
    }
}
