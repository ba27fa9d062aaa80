//! Command-line arguments.

use clap::{Args, Parser, Subcommand};

use crate::stores;

/// act: event sourcing with an event-driven queue store and broker.
///
/// Every command takes `--store URL` (default sqlite://act.db in the current
/// directory, or $ACT_STORE) and `--json` (one JSON object per line).
///
/// Store URLs and their options:
///
///   sqlite://PATH[?readers=N&busy_timeout_ms=N&watch_ms=N&queue_sync=normal|full]
///
///   postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME&pool_size=N&listen=true|false]
///
///   redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=NAME&timeout_ms=N&connect_timeout_ms=N&assume_noeviction=true]
///
///   memory:  (in this process only)
///
/// Commands that only read (status, blocked, events, reactions) never create,
/// migrate or write a store; unblock, reset and retire need one that exists.
///
/// Exit codes: 0 success, 1 operational error (message on stderr), 2 usage
/// error.
#[derive(Debug, Parser)]
#[command(name = "act", version, about, long_about)]
pub struct Cli {
    /// The store: sqlite://PATH, postgres://USER@HOST[:PORT]/DB[?schema=NAME], redis://HOST[:PORT][/DB][?prefix=NAME] or memory: (options: see `act --help`)
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
    /// Run the bank demo's broker until SIGINT/SIGTERM, then shut down
    /// gracefully (finish in-flight handlers, release leases, exit 0).
    Worker(WorkerArgs),
    /// Run a broker until every queue is caught up or blocked, then exit.
    Settle(SettleArgs),
    /// One row per queue: position, head, lag, retries, next attempt, block, lease.
    Status(StatusArgs),
    /// The blocked queues and their errors.
    Blocked,
    /// Clear the block of queues: each resumes at the event that failed.
    Unblock(UnblockArgs),
    /// Move a queue to a position and replay the log from there (or skip ahead).
    Reset(ResetArgs),
    /// The reactions the store has registered: progress, start, retirement.
    Reactions,
    /// Retire reactions the application no longer has: their pending work is
    /// dropped (and counted) and no broker runs them again.
    Retire(RetireArgs),
    /// Print events from the log.
    Events(EventsArgs),
    /// Measure act on a store: appends, deliveries, latency, scaling (see BENCH.md).
    Bench(BenchArgs),
    /// One broker of the bench's drain app until caught up (used by `bench`).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
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

/// A whole number of at least 1.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// Milliseconds, at least 1.
pub fn millis(s: &str) -> Result<u64, String> {
    positive(s).map(|n| n as u64)
}

/// Broker tuning shared by `worker`, `settle` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Queues processed at once (at least 1).
    #[arg(long, default_value_t = 32, value_parser = positive)]
    pub concurrency: usize,
    /// Lease length in seconds (more than 0).
    #[arg(long, default_value_t = 30.0)]
    pub lease: f64,
    /// Events per queue per claim (at least 1).
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub batch: usize,
    /// Fallback polling period in milliseconds (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = millis)]
    pub poll_ms: u64,
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

/// Arguments of `act worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Seconds shutdown waits for in-flight handlers.
    #[arg(long, default_value_t = 10.0)]
    pub grace: f64,
    /// Name of this worker in leases (default: broker-PID-RANDOM).
    #[arg(long)]
    pub name: Option<String>,
    /// Print the worker's counters every this many seconds (a JSON line
    /// with `--json`).
    #[arg(long)]
    pub report_every: Option<f64>,
    #[command(flatten)]
    pub bank: BankArgs,
}

/// Arguments of `act settle`.
#[derive(Debug, Args)]
pub struct SettleArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub bank: BankArgs,
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

/// Arguments of `act status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this queue.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only queues with pending events.
    #[arg(long)]
    pub pending: bool,
    /// At most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Every column in full (by default long columns are cut to fit the
    /// terminal).
    #[arg(long)]
    pub wide: bool,
}

/// Arguments of `act unblock`.
#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The queues to unblock.
    #[arg(required = true)]
    pub streams: Vec<String>,
}

/// Arguments of `act reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The queue.
    pub stream: String,
    /// The new position: events after it are delivered (again), replayed
    /// from the log. 0 replays all; past the log's head is refused.
    #[arg(long, allow_negative_numbers = true)]
    pub to: i64,
    /// Replay into a queue that does not exist yet (one a reaction's
    /// resolver can target); without it, an unknown queue is an error.
    #[arg(long)]
    pub new: bool,
}

/// Arguments of `act retire`.
#[derive(Debug, Args)]
pub struct RetireArgs {
    /// The reactions to retire.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `act events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this stream (`*` and `?` make it a pattern, e.g. 'account-*').
    #[arg(long)]
    pub stream: Option<String>,
    /// Only events with an id above this.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many events (not counting those printed by --follow).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep printing new events as they are committed, until interrupted.
    #[arg(long)]
    pub follow: bool,
}
