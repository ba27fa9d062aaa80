//! `act reactions` (what the store knows of each reaction) and `act retire`.

use std::collections::BTreeMap;

use act::{OpenMode, Query, QueueFilter, Store, SubscriptionState};
use chrono::Utc;
use serde_json::json;

use super::queues::all_queues;
use crate::cli::RetireArgs;
use crate::output::{count, fitted, json_line, line, terminal_width, thousands};
use crate::stores;
use crate::Error;
use crate::Globals;

/// Events a reaction still has to correlate are counted up to this many;
/// past it the listing says "more than".
const COUNT_UP_TO: usize = 1_000_000;

/// Events after `checkpoint` with one of `names`, counted in pages (the ids
/// of some stores are sparse, so `head - checkpoint` is not a count).
async fn left(store: &dyn Store, checkpoint: i64, names: &[String]) -> act::Result<(u64, bool)> {
    const PAGE: usize = 10_000;
    let mut after = checkpoint;
    let mut n = 0usize;
    loop {
        let page = store
            .query(
                &Query::new()
                    .after(after)
                    .names(names.iter().cloned())
                    .limit(PAGE),
            )
            .await?;
        n += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE && n < COUNT_UP_TO => after = last.id,
            _ => return Ok((n as u64, n >= COUNT_UP_TO)),
        }
    }
}

pub async fn list(cli: &Globals) -> Result<(), Error> {
    let store = stores::open_mode(&cli.store, OpenMode::ReadOnly).await?;
    let subs = store.subscriptions().await?;
    let queues = all_queues(&*store, QueueFilter::default()).await?;
    let replays = store.replays().await?;
    let head = store.head().await?;
    let pending: BTreeMap<String, u64> = store.pending_by_reaction().await?.into_iter().collect();
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    for q in &queues {
        if let Some(w) = &q.waiting {
            *waiting.entry(w.as_str()).or_default() += 1;
        }
    }
    let mut rows = Vec::new();
    for s in &subs {
        let (behind, more) = if s.retired.is_some() || s.checkpoint >= head {
            (0, false)
        } else {
            left(&*store, s.checkpoint, &s.events).await?
        };
        let target = s
            .target
            .as_ref()
            .and_then(|t| queues.iter().find(|q| &q.stream == t));
        let replaying = replays.iter().filter(|r| r.reaction == s.name).count();
        let waits = waiting.get(s.name.as_str()).copied().unwrap_or(0);
        let items = pending.get(&s.name).copied().unwrap_or(0);
        let seen_s = (Utc::now() - s.seen).num_milliseconds() as f64 / 1000.0;
        if cli.json {
            json_line(&json!({
                "name": s.name, "events": s.events, "target": s.target, "start": s.start,
                "checkpoint": s.checkpoint, "head": head, "to_correlate": behind, "to_correlate_more": more,
                "pending": items,
                "queue": target.map(|q| json!({"lag": q.lag, "blocked": q.blocked, "position": q.position})),
                "waiting_queues": waits, "replays": replaying,
                "created": s.created, "seen": s.seen, "retired": s.retired,
            }))?;
            continue;
        }
        rows.push(vec![
            s.name.clone(),
            s.events.join(","),
            s.target.clone().unwrap_or_else(|| "(dynamic)".into()),
            if s.start == 0 {
                "beginning".into()
            } else {
                format!("after {}", s.start)
            },
            progress(s, head, behind, more),
            thousands(items as f64),
            target.map_or("-".into(), |q| {
                format!("lag {}{}", q.lag, if q.blocked { ", blocked" } else { "" })
            }),
            if waits == 0 {
                "-".into()
            } else {
                count(waits, "queue", "queues")
            },
            if replaying == 0 {
                "-".into()
            } else {
                count(replaying, "queue", "queues")
            },
            match s.retired {
                Some(at) => format!("retired {}", at.format("%Y-%m-%d %H:%M")),
                None if seen_s > 30.0 => format!("no broker for {}s", seen_s.round()),
                None => "active".into(),
            },
        ]);
    }
    if cli.json {
        return Ok(());
    }
    if rows.is_empty() {
        return line(
            "no reactions registered yet (a broker registers its reactions when it starts)",
        );
    }
    line(fitted(
        &[
            "REACTION",
            "EVENTS",
            "QUEUE",
            "START",
            "CORRELATED",
            "PENDING",
            "QUEUE STATE",
            "WAITING",
            "REPLAYING",
            "STATE",
        ],
        &rows,
        terminal_width().unwrap_or(usize::MAX),
    ))?;
    line(format!(
        "{}; log head {head}",
        count(subs.len(), "reaction", "reactions")
    ))
}

fn progress(s: &SubscriptionState, head: i64, behind: u64, more: bool) -> String {
    if s.retired.is_some() {
        return "-".into();
    }
    if s.checkpoint >= head {
        return "caught up".into();
    }
    format!(
        "to {} ({}{} events left)",
        s.checkpoint,
        if more { "more than " } else { "" },
        thousands(behind as f64)
    )
}

pub async fn retire(cli: &Globals, args: &RetireArgs) -> Result<(), Error> {
    let store = stores::open_mode(&cli.store, OpenMode::Existing).await?;
    let retired = store.retire(&args.names).await?;
    for r in retired {
        if cli.json {
            json_line(&r)?;
        } else if r.newly {
            line(format!(
                "{}: retired; dropped {} pending in {}",
                r.name,
                count(r.dropped as usize, "item", "items"),
                count(r.queues as usize, "queue", "queues")
            ))?;
        } else {
            line(format!("{}: already retired", r.name))?;
        }
    }
    Ok(())
}
