//! The command line: `serve` and the operator commands (JSON on stdout).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Self-hostable AI model API platform"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (TOML), layered over the compiled-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://PATH (default sqlite://tollgate.db) or postgres://…
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Billing methods.
    #[command(subcommand)]
    Billing(BillingCmd),
    /// Grant or deduct credits.
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// Check the books.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Show configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account (tier `free`).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key; the full key is printed once.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "default")]
        name: String,
        /// A management key (manages keys, cannot call models).
        #[arg(long)]
        management: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BillingCmd {
    /// Save a card with the payment provider (no charge).
    AddCard {
        #[arg(long)]
        email: String,
        #[arg(long, value_name = "NUMBER")]
        card: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreditsCmd {
    /// Grant (or, negative, deduct) credits as an ADJUSTMENT ledger entry.
    Grant {
        #[arg(long)]
        email: String,
        #[arg(long, allow_hyphen_values = true)]
        credits: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Exit 0 when every balance equals its ledger and no hold is past its lease.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration, secrets redacted.
    Show,
}
