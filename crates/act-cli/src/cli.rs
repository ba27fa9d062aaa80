//! Command-line arguments.

use clap::{Args, Parser, Subcommand};

use crate::stores;

/// act: event sourcing with an event-driven queue store and broker.
#[derive(Debug, Parser)]
#[command(name = "act", version, about, long_about = None)]
pub struct Cli {
    /// The store: memory:
    #[arg(long, global = true, env = "ACT_STORE", default_value = stores::DEFAULT)]
    pub store: String,

    /// One JSON object per line instead of text (no progress bars).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Append the bank demo workload, deliver every reaction, check the log.
    Demo(DemoArgs),
}

/// Arguments of `act demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Accounts to open.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Deposits and withdrawals to append.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Seed of the random workload.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Accounts that get one poisoned deposit (their audit queue blocks).
    #[arg(long, default_value_t = 2)]
    pub poison: usize,
    /// Share of deposits whose handlers fail their first 1–2 attempts.
    #[arg(long, default_value_t = 0.01)]
    pub fail_share: f64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Queues the broker processes at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Only append: leave delivery to `act worker` processes.
    #[arg(long)]
    pub no_settle: bool,
}
