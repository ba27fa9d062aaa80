//! `act worker` (a broker until interrupted) and `act settle` (a broker
//! until everything is caught up or blocked), both for the bank demo app.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{broker_options, seconds, shutdown_signal};
use crate::cli::{Cli, SettleArgs, WorkerArgs};
use crate::error::CliError;
use crate::output::{json_line, line, rate, thousands};
use crate::stores;

pub async fn worker(cli: &Cli, args: &WorkerArgs) -> Result<(), CliError> {
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    let mut options = broker_options(&args.broker)?.grace(seconds("--grace", args.grace)?);
    if let Some(name) = &args.name {
        options = options.owner(name.clone());
    }
    let report_every = args
        .report_every
        .map(|s| seconds("--report-every", s))
        .transpose()?;
    // A worker outlives store blips: it waits for the store to open (and
    // still stops at once on SIGINT/SIGTERM).
    let store = tokio::select! {
        store = stores::open_patiently(&cli.store, Duration::from_secs(300)) => store?,
        _ = &mut stop => return Ok(()),
    };
    let app = act_bank::app_with(store, args.bank.options())?;
    // Fail fast on what waiting cannot fix (an undeclared start, a retired
    // name); transient failures are the broker's to wait out.
    match app.register().await {
        Err(e) if !e.is_transient() => return Err(e.into()),
        _ => {}
    }
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
    match report_every {
        None => (&mut stop).await,
        Some(every) => loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(every) => {
                    let stats = handle.stats();
                    if cli.json {
                        json_line(&json!({"command": "worker", "event": "stats", "owner": owner,
                            "seconds": started.elapsed().as_secs_f64(), "stats": stats}))?;
                    } else {
                        line(format!("worker {owner}: {} events, {} reactions, {} store errors so far",
                            stats.events, stats.reactions, stats.errors))?;
                    }
                }
            }
        },
    }
    let stats = handle.shutdown().await?;
    let elapsed = started.elapsed();
    if cli.json {
        json_line(
            &json!({"command": "worker", "event": "stopped", "owner": owner, "seconds": elapsed.as_secs_f64(), "stats": stats}),
        )?;
    } else {
        line(format!(
            "worker {owner} stopped after {:.1}s: {} events, {} reactions ({}/s), {} retries, {} blocked, {} rejected, {} leases lost, {} store errors",
            elapsed.as_secs_f64(),
            stats.events,
            stats.reactions,
            thousands(rate(stats.reactions, elapsed)),
            stats.retries,
            stats.blocked,
            stats.rejected,
            stats.lost,
            stats.errors
        ))?;
    }
    Ok(())
}

pub async fn settle(cli: &Cli, args: &SettleArgs) -> Result<(), CliError> {
    let options = broker_options(&args.broker)?;
    let store = stores::open(&cli.store).await?;
    let app = act_bank::app_with(store.clone(), args.bank.options())?;
    let started = Instant::now();
    let stats = app.broker(options).settle().await?;
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
