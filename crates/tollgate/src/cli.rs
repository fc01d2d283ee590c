//! The command line: `serve` and the operator commands (JSON on stdout).

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
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
    /// Grant or adjust credits.
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

/// Commands that move credits or check the books: they must see the live holds, so while a
/// server serves a SQLite database they are run by that server (through its control socket).
#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
pub enum CreditsCmd {
    /// Grant credits (a positive ADJUSTMENT ledger entry with its reason).
    Grant {
        #[arg(long)]
        email: String,
        #[arg(long, allow_hyphen_values = true)]
        credits: i64,
        #[arg(long)]
        reason: String,
    },
    /// Add (positive) or deduct (negative) credits as an ADJUSTMENT ledger entry with its
    /// reason. A deduction may not take the credits no live request holds below zero.
    Adjust {
        #[arg(long)]
        email: String,
        #[arg(long, allow_hyphen_values = true)]
        credits: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
pub enum LedgerCmd {
    /// Exit 0 when every balance equals its ledger, no hold is past its lease, and every
    /// usage row's charge equals its ledger entry and its units' price.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration, secrets redacted.
    Show,
}
