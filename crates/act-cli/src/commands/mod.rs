//! One module per command family; `run` dispatches.

mod demo;
mod events;
mod queues;
mod reactions;
mod worker;

use std::time::Duration;

use act::BrokerOptions;

use crate::cli::{BrokerArgs, Cli, Command};
use crate::error::CliError;

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Demo(args) => demo::run(&cli, args).await,
        Command::Worker(args) => worker::worker(&cli, args).await,
        Command::Settle(args) => worker::settle(&cli, args).await,
        Command::Status(args) => queues::status(&cli, args).await,
        Command::Blocked => queues::blocked(&cli).await,
        Command::Unblock(args) => queues::unblock(&cli, args).await,
        Command::Reset(args) => queues::reset(&cli, args).await,
        Command::Reactions => reactions::list(&cli).await,
        Command::Retire(args) => reactions::retire(&cli, args).await,
        Command::Events(args) => events::run(&cli, args).await,
        Command::Bench(args) => crate::bench::run(&cli, args).await,
        Command::BenchWorker(args) => crate::bench::worker(&cli, args).await,
    }
}

/// Broker options from the shared flags.
fn broker_options(args: &BrokerArgs) -> Result<BrokerOptions, CliError> {
    let lease = seconds("--lease", args.lease)?;
    Ok(BrokerOptions::default()
        .concurrency(args.concurrency)
        .batch(args.batch)
        .lease(lease)
        .poll(Duration::from_millis(args.poll_ms)))
}

/// A positive number of seconds from a flag.
fn seconds(flag: &str, s: f64) -> Result<Duration, CliError> {
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        return Err(act::Error::InvalidInput(format!(
            "{flag} must be a positive number of seconds, got {s}"
        ))
        .into());
    }
    Ok(Duration::from_secs_f64(s))
}

/// Installs SIGINT and SIGTERM handlers now (so a signal that arrives while
/// the command is still starting is not lost) and returns a future that
/// resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
