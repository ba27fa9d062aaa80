//! `act worker` (a broker until interrupted) and `act settle` (a broker
//! until everything is caught up or blocked), both for the bank demo app.

use std::time::Instant;

use serde_json::json;

use super::{broker_options, seconds, shutdown_signal};
use crate::cli::{Cli, SettleArgs, WorkerArgs};
use crate::error::CliError;
use crate::output::{json_line, line, rate, thousands};
use crate::stores;

pub async fn worker(cli: &Cli, args: &WorkerArgs) -> Result<(), CliError> {
    let stop = shutdown_signal()?;
    let mut options = broker_options(&args.broker)?.grace(seconds("--grace", args.grace)?);
    if let Some(name) = &args.name {
        options = options.owner(name.clone());
    }
    let store = stores::open(&cli.store).await?;
    let app = act_bank::app_with(store, act_bank::Options { cured: args.cured })?;
    let owner = options.owner.clone();
    let started = Instant::now();
    let handle = app.broker(options).start();
    if cli.json {
        json_line(
            &json!({"command": "worker", "event": "started", "owner": owner, "pid": std::process::id()}),
        )?;
    } else {
        line(format!(
            "worker {owner} running on {}; Ctrl-C to stop",
            act::redact_url(&cli.store)
        ))?;
    }
    stop.await;
    let stats = handle.shutdown().await?;
    let elapsed = started.elapsed();
    if cli.json {
        json_line(
            &json!({"command": "worker", "event": "stopped", "owner": owner, "seconds": elapsed.as_secs_f64(), "stats": stats}),
        )?;
    } else {
        line(format!(
            "worker {owner} stopped after {:.1}s: {} events, {} reactions ({}/s), {} retries, {} blocked, {} rejected, {} leases lost",
            elapsed.as_secs_f64(),
            stats.events,
            stats.reactions,
            thousands(rate(stats.reactions, elapsed)),
            stats.retries,
            stats.blocked,
            stats.rejected,
            stats.lost
        ))?;
    }
    Ok(())
}

pub async fn settle(cli: &Cli, args: &SettleArgs) -> Result<(), CliError> {
    let store = stores::open(&cli.store).await?;
    let app = act_bank::app_with(store.clone(), act_bank::Options { cured: args.cured })?;
    let started = Instant::now();
    let stats = app.broker(broker_options(&args.broker)?).catch_up().await?;
    let elapsed = started.elapsed();
    let blocked = store
        .queues(&act::QueueFilter {
            blocked: true,
            ..Default::default()
        })
        .await?;
    if cli.json {
        json_line(
            &json!({"command": "settle", "seconds": elapsed.as_secs_f64(), "stats": stats, "blocked": blocked.len()}),
        )?;
    } else {
        line(format!(
            "settled in {:.2}s: {} events, {} reactions, {} retries; {} queues blocked",
            elapsed.as_secs_f64(),
            stats.events,
            stats.reactions,
            stats.retries,
            blocked.len()
        ))?;
    }
    Ok(())
}
