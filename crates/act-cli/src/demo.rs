//! `act demo`: append the bank workload, deliver every reaction with one
//! broker (unless `--no-settle`), check the log, print a summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use act_bank::{verify, Workload};
use serde_json::json;

use crate::bank::DemoArgs;
use act_cli::output::{bar, json_line, line, rate, thousands};
use act_cli::stores;
use act_cli::Error;
use act_cli::Globals;

pub async fn run(cli: &Globals, args: &DemoArgs) -> Result<(), Error> {
    let workload = Workload {
        accounts: args.accounts,
        events: args.events,
        seed: args.seed,
        fail_share: args.fail_share,
        poison: args.poison,
        writers: args.writers,
    };
    // Every flag is checked before anything is written.
    workload.validate()?;
    let options = args.broker.options()?;
    let store = stores::open(&cli.store).await?;
    let app = act_bank::app_with(
        store.clone(),
        act_bank::Options {
            ledger: args.ledger,
            ..Default::default()
        },
    )?;

    let done = Arc::new(AtomicU64::new(0));
    let pb = bar(cli.json, Some(args.events as u64), "append");
    let ticker = {
        let (pb, done) = (pb.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let appended = workload.run(&app, done).await;
    ticker.abort();
    pb.finish_and_clear();
    let report = appended?;

    let mut summary = json!({
        "command": "demo",
        "store": act::redact_url(&cli.store),
        "accounts": args.accounts,
        "seed": args.seed,
        "events": report.events(),
        "opened": report.opened,
        "deposits": report.deposits,
        "withdrawals": report.withdrawals,
        "failing": report.failing,
        "poisoned": report.poisoned,
        "refused": report.refused,
        "conflicts": report.conflicts,
        "append_seconds": report.elapsed.as_secs_f64(),
        "events_per_s": rate(report.events() + report.opened, report.elapsed),
    });
    if !cli.json {
        line(format!(
            "appended  {} events ({} deposits, {} withdrawals, {} accounts opened) in {:.2}s: {} events/s",
            report.events() + report.opened,
            report.deposits,
            report.withdrawals,
            report.opened,
            report.elapsed.as_secs_f64(),
            thousands(rate(report.events() + report.opened, report.elapsed)),
        ))?;
    }
    if args.no_settle {
        if cli.json {
            json_line(&summary)?;
        } else {
            line("delivery  left to `act worker` processes (--no-settle)")?;
        }
        return Ok(());
    }

    let broker = app.broker(options);
    let pb = bar(cli.json, None, "deliver");
    let started = Instant::now();
    let delivery = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.settle().await })
    };
    while !delivery.is_finished() {
        pb.set_position(broker.stats().reactions);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pb.finish_and_clear();
    let stats = delivery
        .await
        .map_err(|e| Error::Check(vec![format!("the broker task failed: {e}")]))??;
    let elapsed = started.elapsed();
    let verdict = verify(&*store).await?;

    summary["reactions"] = json!(stats.reactions);
    summary["retries"] = json!(stats.retries);
    summary["blocked"] = json!(verdict.blocked);
    summary["deliver_seconds"] = json!(elapsed.as_secs_f64());
    summary["reactions_per_s"] = json!(rate(stats.reactions, elapsed));
    summary["check"] = json!({
        "ok": verdict.ok(),
        "sources": verdict.sources,
        "recorded": verdict.recorded,
        "totaled": verdict.totaled,
        "problems": verdict.problems,
    });
    if cli.json {
        json_line(&summary)?;
    } else {
        line(format!(
            "delivered {} reactions ({} retries, {} queues blocked: {}) in {:.2}s: {} reactions/s",
            stats.reactions,
            stats.retries,
            verdict.blocked.len(),
            if verdict.blocked.is_empty() {
                "none".to_string()
            } else {
                verdict.blocked.join(", ")
            },
            elapsed.as_secs_f64(),
            thousands(rate(stats.reactions, elapsed)),
        ))?;
        if verdict.ok() {
            let posted = if verdict.posted > 0 {
                format!(", {} Posted", verdict.posted)
            } else {
                String::new()
            };
            line(format!(
                "check     ok: {} deposits/withdrawals, {} Recorded, {} Totaled{posted}, each once and in source order; only poisoned queues blocked",
                verdict.sources, verdict.recorded, verdict.totaled
            ))?;
        }
    }
    if !verdict.ok() {
        return Err(Error::Check(verdict.problems));
    }
    Ok(())
}
