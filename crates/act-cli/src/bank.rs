//! The `act` binary's own flags and commands, for the bank demo: the flags
//! its workers take (which version of the demo's reactions they run) and the
//! `demo` and `bench` commands. A program built on `act_cli` gets none of
//! them.

use act_cli::args::{positive, BrokerArgs};
use clap::{Args, Subcommand};

/// The `act` binary's own commands.
#[derive(Debug, Subcommand)]
pub enum BankCommand {
    /// Append the bank demo workload, deliver every reaction, check the log.
    Demo(DemoArgs),
    /// Measure act on a store: appends, deliveries, latency, scaling (see BENCH.md).
    Bench(BenchArgs),
    /// One broker of the bench's drain app until caught up (used by `bench`).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
}

/// Which version of the bank demo's reactions a broker runs.
#[derive(Debug, Clone, Copy, Args)]
pub struct BankArgs {
    /// The fix for poisoned deposits is deployed: audit records them (use
    /// with `act unblock` to let blocked audit queues finish).
    #[arg(long)]
    pub cured: bool,
    /// Version 2 of the demo: also run the `ledger` reaction (added to a
    /// running bank, it replays the history first).
    #[arg(long)]
    pub ledger: bool,
    /// A poisoned deposit aborts the process in its handler (a crash loop;
    /// for tests of workers that die).
    #[arg(long, hide = true)]
    pub crash_on_poison: bool,
    /// Retries before a queue blocks (default 3). A lease that ends without
    /// a settlement (a killed worker) counts as a failed attempt.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Also run the `entries` projection: every deposit and withdrawal as a
    /// row of the table `act_bank_entries` in the store's own database,
    /// written in one transaction with its acknowledgement (SQLite and
    /// PostgreSQL).
    #[arg(long)]
    pub entries: bool,
}

impl BankArgs {
    /// The demo's handler options.
    pub fn options(&self) -> act_bank::Options {
        act_bank::Options {
            cured: self.cured,
            ledger: self.ledger,
            crash_on_poison: self.crash_on_poison,
            max_retries: self.max_retries,
        }
    }
}

/// Arguments of `act demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Accounts to open (at least 1).
    #[arg(long, default_value_t = 100, value_parser = positive)]
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
    /// Concurrent writers (at least 1).
    #[arg(long, default_value_t = 4, value_parser = positive)]
    pub writers: usize,
    /// Only append: leave delivery to `act worker` processes.
    #[arg(long)]
    pub no_settle: bool,
    /// Version 2 of the demo: also run the `ledger` reaction.
    #[arg(long)]
    pub ledger: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Arguments of `act bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A workload to run (repeat for several; default: all).
    #[arg(long = "workload", value_enum)]
    pub workloads: Vec<crate::bench::Workload>,
    /// Multiply every workload's event count (0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Queues each broker processes at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Events per queue per claim.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Brokers' fallback polling period in milliseconds (latency without push).
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Record metrics into the Prometheus exporter's recorder, as
    /// `act worker --metrics` does (rendered once at the end), to measure
    /// what metrics cost; run with `ACT_LOG=info,act=debug` to record every
    /// span too.
    #[arg(long)]
    pub observe: bool,
    /// `scale` on PostgreSQL or Redis: the workers reach the server through
    /// a TCP proxy that holds every chunk this many milliseconds in each
    /// direction (a round trip costs twice it), as brokers on other machines.
    #[arg(long)]
    pub delay_ms: Option<f64>,
}

/// Arguments of `act bench-worker`.
#[derive(Debug, Args)]
pub struct BenchWorkerArgs {
    /// Queues processed at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Events per queue per claim.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Fallback polling period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
}
