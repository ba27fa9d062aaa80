//! `worker` (a broker until interrupted) and `settle` (a broker until
//! everything is caught up or blocked), both for the program's application.

use std::sync::Arc;
use std::time::{Duration, Instant};

use act::{Act, Store};
use clap::Args;

use serde_json::json;

use super::shutdown_signal;
use crate::args::seconds;
use crate::cli::{SettleArgs, WorkerArgs};
use crate::output::{json_line, line, rate, thousands};
use crate::stores;
use crate::{Error, Globals};

pub async fn worker<A: Args>(
    cli: &Globals,
    args: &WorkerArgs<A>,
    app: impl FnOnce(Arc<dyn Store>) -> act::Result<Act>,
) -> Result<(), Error> {
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    let mut options = args
        .broker
        .options()?
        .grace(seconds("--grace", args.grace)?);
    if let Some(name) = &args.name {
        options = options.owner(name.clone());
    }
    let report_every = args
        .report_every
        .map(|s| seconds("--report-every", s))
        .transpose()?;
    // A worker outlives store blips: it waits for the store to open (and
    // still stops at once on SIGINT/SIGTERM).
    let url = named(&cli.store, &options.owner);
    let store = tokio::select! {
        store = stores::open_patiently(&url, Duration::from_secs(300)) => store?,
        _ = &mut stop => return Ok(()),
    };
    let app = app(store)?;
    // Fail fast on what waiting cannot fix (an undeclared start, a retired
    // name); transient failures are the broker's to wait out.
    match app.register().await {
        Err(e) if !e.is_transient() => return Err(e.into()),
        _ => {}
    }
    let owner = options.owner.clone();
    let broker = app.broker(options);
    // The endpoint comes first: a port in use fails before any work is claimed.
    let exporter = match args.metrics {
        Some(addr) => {
            let rules = crate::observe::Rules {
                stuck_after: seconds("--stuck-after", args.stuck_after)?,
                stalled_after: seconds("--stalled-after", args.stalled_after)?,
                ..Default::default()
            };
            Some(crate::observe::serve(addr, app.store().clone(), broker.clone(), rules).await?)
        }
        None => None,
    };
    let metrics = exporter.as_ref().map(|e| e.addr().to_string());
    let started = Instant::now();
    let handle = broker.start();
    if cli.json {
        json_line(
            &json!({"command": "worker", "event": "started", "owner": owner, "pid": std::process::id(), "metrics": metrics}),
        )?;
    } else {
        line(format!(
            "worker {owner} running on {}{}; Ctrl-C to stop",
            act::redact_url(&cli.store),
            metrics
                .as_deref()
                .map(|a| format!(", metrics and health on http://{a}/metrics, /healthz, /readyz"))
                .unwrap_or_default()
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

pub async fn settle<A: Args>(
    cli: &Globals,
    args: &SettleArgs<A>,
    app: impl FnOnce(Arc<dyn Store>) -> act::Result<Act>,
) -> Result<(), Error> {
    let options = args.broker.options()?;
    let store = stores::open(&cli.store).await?;
    let app = app(store.clone())?;
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

/// The store URL with the worker's name as the connection's name on the
/// server (`application_name` in `pg_stat_activity`, `client_name` in
/// Redis' `CLIENT LIST`), unless the URL names it already or the name is
/// not plain (letters, digits, `.`, `_`, `-`).
fn named(url: &str, owner: &str) -> String {
    let key = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        "application_name"
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        "client_name"
    } else {
        return url.to_string();
    };
    let plain = !owner.is_empty()
        && owner.len() <= 63
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    // The one URL parser every backend uses: a percent-encoded `?` or `&`
    // in a password or a value is not mistaken for the query's.
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string(); // the backend reports what is wrong with it
    };
    if !plain || parsed.query_pairs().any(|(k, _)| k == key) {
        return url.to_string();
    }
    parsed.query_pairs_mut().append_pair(key, owner);
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::named;

    #[test]
    fn a_worker_names_its_connections_unless_the_url_does() {
        assert_eq!(
            named("postgres://u@h/db", "w-1"),
            "postgres://u@h/db?application_name=w-1"
        );
        assert_eq!(
            named("postgres://u@h/db?schema=s", "w-1"),
            "postgres://u@h/db?schema=s&application_name=w-1"
        );
        assert_eq!(
            named("postgres://u@h/db?application_name=mine", "w-1"),
            "postgres://u@h/db?application_name=mine"
        );
        assert_eq!(
            named("rediss://h:6380/0", "w-1"),
            "rediss://h:6380/0?client_name=w-1"
        );
        assert_eq!(named("sqlite://act.db", "w-1"), "sqlite://act.db");
        assert_eq!(named("postgres://u@h/db", "a b"), "postgres://u@h/db");
        // A `?` or `&` inside the password is not the query (the password
        // comes back percent-encoded the url crate's way: the same value).
        assert_eq!(
            named("postgres://u:p%3Fq%26application_name=x@h/db", "w-1"),
            "postgres://u:p%3Fq%26application_name%3Dx@h/db?application_name=w-1"
        );
        assert_eq!(
            named(
                "postgres://u@h/db?sslmode=require&application_name=mine",
                "w-1"
            ),
            "postgres://u@h/db?sslmode=require&application_name=mine"
        );
    }
}
