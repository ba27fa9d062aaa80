//! Operator commands on queues: `status`, `blocked`, `unblock`, `reset`.

use act::{QueueFilter, QueueState};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{Cli, ResetArgs, StatusArgs, UnblockArgs};
use crate::error::CliError;
use crate::output::{json_line, line, table};
use crate::stores;

/// `when` relative to now, for people: "in 2.5s", "3s ago".
fn relative(when: Option<DateTime<Utc>>) -> String {
    let Some(t) = when else { return "-".into() };
    let ms = (t - Utc::now()).num_milliseconds();
    if ms >= 0 {
        format!("in {:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{:.1}s ago", -ms as f64 / 1000.0)
    }
}

fn row(q: &QueueState) -> Vec<String> {
    vec![
        q.stream.clone(),
        q.position.to_string(),
        q.head.to_string(),
        q.lag.to_string(),
        q.retries.to_string(),
        relative(q.retry_at),
        if q.blocked { "yes".into() } else { "no".into() },
        q.error.clone().unwrap_or_else(|| "-".into()),
        q.lease_owner.clone().unwrap_or_else(|| "-".into()),
        relative(q.lease_expires),
    ]
}

const HEADER: [&str; 10] = [
    "STREAM",
    "POSITION",
    "HEAD",
    "LAG",
    "RETRIES",
    "NEXT ATTEMPT",
    "BLOCKED",
    "ERROR",
    "LEASE OWNER",
    "LEASE EXPIRES",
];

pub async fn status(cli: &Cli, args: &StatusArgs) -> Result<(), CliError> {
    let store = stores::open(&cli.store).await?;
    let queues = store
        .queues(&QueueFilter {
            stream: args.stream.clone(),
            pending: args.pending,
            limit: args.limit,
            ..Default::default()
        })
        .await?;
    let head = store.head().await?;
    let checkpoint = store.checkpoint().await?;
    let lag: u64 = queues.iter().map(|q| q.lag).sum();
    let blocked = queues.iter().filter(|q| q.blocked).count();
    let retrying = queues
        .iter()
        .filter(|q| q.retry_at.is_some() && !q.blocked)
        .count();
    let now = Utc::now();
    let leased = queues
        .iter()
        .filter(|q| q.lease_expires.is_some_and(|e| e > now))
        .count();
    let totals = json!({
        "queues": queues.len(), "lag": lag, "blocked": blocked, "retrying": retrying, "leased": leased,
        "head": head, "checkpoint": checkpoint, "correlated": checkpoint >= head,
    });
    if cli.json {
        for q in &queues {
            json_line(q)?;
        }
        json_line(&json!({ "totals": totals }))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = queues.iter().map(row).collect();
    line(table(&HEADER, &rows))?;
    line(format!(
        "{} queues, lag {lag}, {retrying} retrying, {blocked} blocked, {leased} leased; log head {head}, correlated up to {checkpoint}",
        queues.len()
    ))?;
    Ok(())
}

pub async fn blocked(cli: &Cli) -> Result<(), CliError> {
    let store = stores::open(&cli.store).await?;
    let queues = store
        .queues(&QueueFilter {
            blocked: true,
            ..Default::default()
        })
        .await?;
    if cli.json {
        for q in &queues {
            json_line(q)?;
        }
        return Ok(());
    }
    if queues.is_empty() {
        return line("no blocked queues");
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            vec![
                q.stream.clone(),
                q.position.to_string(),
                q.next.map_or("-".into(), |n| n.to_string()),
                q.lag.to_string(),
                q.retries.to_string(),
                q.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    line(table(
        &[
            "STREAM",
            "POSITION",
            "BLOCKED AT",
            "LAG",
            "RETRIES",
            "ERROR",
        ],
        &rows,
    ))
}

pub async fn unblock(cli: &Cli, args: &UnblockArgs) -> Result<(), CliError> {
    let store = stores::open(&cli.store).await?;
    let done = store.unblock(&args.streams).await?;
    let mut unknown = Vec::new();
    for s in &args.streams {
        let unblocked = done.contains(s);
        let exists = unblocked
            || !store
                .queues(&QueueFilter {
                    stream: Some(s.clone()),
                    ..Default::default()
                })
                .await?
                .is_empty();
        let outcome = match (unblocked, exists) {
            (true, _) => "unblocked",
            (false, true) => "not blocked",
            (false, false) => {
                unknown.push(s.clone());
                "unknown queue"
            }
        };
        if cli.json {
            json_line(&json!({"stream": s, "outcome": outcome}))?;
        } else {
            line(format!("{s}: {outcome}"))?;
        }
    }
    match unknown.first() {
        Some(s) => Err(act::Error::UnknownQueue(s.clone()).into()),
        None => Ok(()),
    }
}

pub async fn reset(cli: &Cli, args: &ResetArgs) -> Result<(), CliError> {
    let store = stores::open(&cli.store).await?;
    let q = store.reset(&args.stream, args.to).await?;
    if cli.json {
        json_line(&q)?;
    } else {
        line(format!(
            "{}: position {}, {} events to deliver (head {})",
            q.stream, q.position, q.lag, q.head
        ))?;
    }
    Ok(())
}
