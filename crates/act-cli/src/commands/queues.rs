//! Operator commands on queues: `status`, `blocked`, `unblock`, `reset`.
//! `status` and `blocked` open the store read-only; `unblock` and `reset`
//! need one that exists.

use std::collections::BTreeMap;

use act::{OpenMode, QueueFilter, QueueState, SubscriptionState};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{ResetArgs, StatusArgs, UnblockArgs};
use crate::output::{count, fitted, json_line, line, natural, terminal_width};
use crate::stores;
use crate::Error;
use crate::Globals;

/// How long after its last registration a reaction counts as run by no
/// broker (brokers register every 5 s by default).
const SEEN_RECENTLY: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

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

/// What a queue waits for, if anything, in words.
fn waits(q: &QueueState, subs: &BTreeMap<String, SubscriptionState>) -> Option<String> {
    if let Some(r) = &q.waiting {
        let nobody = subs
            .get(r)
            .is_none_or(|s| Utc::now() - s.seen > SEEN_RECENTLY);
        return Some(if nobody {
            format!("reaction `{r}`, which no running broker has")
        } else {
            format!("a broker with reaction `{r}`")
        });
    }
    q.replay
        .map(|at| format!("its replay (re-correlated up to {at})"))
}

fn row(q: &QueueState, subs: &BTreeMap<String, SubscriptionState>) -> Vec<String> {
    vec![
        q.stream.clone(),
        q.position.to_string(),
        q.head.to_string(),
        q.lag.to_string(),
        q.retries.to_string(),
        relative(q.retry_at),
        if q.blocked { "yes".into() } else { "no".into() },
        waits(q, subs).unwrap_or_else(|| "-".into()),
        q.error.clone().unwrap_or_else(|| "-".into()),
        q.lease_owner.clone().unwrap_or_else(|| "-".into()),
        relative(q.lease_expires),
    ]
}

const HEADER: [&str; 11] = [
    "STREAM",
    "POSITION",
    "HEAD",
    "LAG",
    "RETRIES",
    "NEXT ATTEMPT",
    "BLOCKED",
    "WAITING FOR",
    "ERROR",
    "LEASE OWNER",
    "LEASE EXPIRES",
];

/// Every queue matching `filter`, a page at a time (stores list at most
/// what they are asked for; an operator may have 100,000 queues).
pub(crate) async fn all_queues(
    store: &dyn act::Store,
    filter: QueueFilter,
) -> act::Result<Vec<QueueState>> {
    const PAGE: usize = 1000;
    let mut out: Vec<QueueState> = Vec::new();
    loop {
        let want = filter.limit.map_or(PAGE, |l| (l - out.len()).min(PAGE));
        if want == 0 {
            return Ok(out);
        }
        let page = store
            .queues(&QueueFilter {
                after: out
                    .last()
                    .map(|q| q.stream.clone())
                    .or(filter.after.clone()),
                limit: Some(want),
                ..filter.clone()
            })
            .await?;
        let full = page.len() == want;
        out.extend(page);
        if !full || filter.stream.is_some() {
            return Ok(out);
        }
    }
}

pub async fn status(cli: &Globals, args: &StatusArgs) -> Result<(), Error> {
    let store = stores::open_mode(&cli.store, OpenMode::ReadOnly).await?;
    let mut queues = all_queues(
        &*store,
        QueueFilter {
            stream: args.stream.clone(),
            pending: args.pending,
            limit: args.limit,
            ..Default::default()
        },
    )
    .await?;
    queues.sort_by(|a, b| natural(&a.stream, &b.stream));
    let subs: BTreeMap<String, SubscriptionState> = store
        .subscriptions()
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let head = store.head().await?;
    let active: Vec<&SubscriptionState> = subs.values().filter(|s| s.retired.is_none()).collect();
    let correlated = active.iter().map(|s| s.checkpoint).min().unwrap_or(head);
    let lag: u64 = queues.iter().map(|q| q.lag).sum();
    let blocked = queues.iter().filter(|q| q.blocked).count();
    // A retry records its error; a deferral (a handler's "not yet", a
    // timer waiting for its time) records none.
    let retrying = queues
        .iter()
        .filter(|q| q.retry_at.is_some() && !q.blocked && q.error.is_some())
        .count();
    let deferred = queues
        .iter()
        .filter(|q| q.retry_at.is_some() && !q.blocked && q.error.is_none())
        .count();
    let waiting = queues.iter().filter(|q| q.waiting.is_some()).count();
    let now = Utc::now();
    let leased = queues
        .iter()
        .filter(|q| q.lease_expires.is_some_and(|e| e > now))
        .count();
    let totals = json!({
        "queues": queues.len(), "lag": lag, "blocked": blocked, "retrying": retrying,
        "deferred": deferred, "leased": leased,
        "waiting": waiting, "head": head, "correlated_to": correlated, "correlated": correlated >= head,
        "reactions": active.len(),
    });
    if cli.json {
        for q in &queues {
            let mut v = serde_json::to_value(q).map_err(|e| act::Error::decode("a queue", e))?;
            if let Some(w) = waits(q, &subs) {
                v["waits_for"] = json!(w);
            }
            json_line(&v)?;
        }
        json_line(&json!({ "totals": totals }))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = queues.iter().map(|q| row(q, &subs)).collect();
    let width = if args.wide { None } else { terminal_width() };
    line(fitted(&HEADER, &rows, width.unwrap_or(usize::MAX)))?;
    let behind = if correlated >= head {
        "every reaction correlated".to_string()
    } else {
        format!("reactions correlated up to {correlated}")
    };
    line(format!(
        "{}, lag {lag}, {retrying} retrying, {deferred} deferred, {blocked} blocked, {waiting} waiting, {leased} leased; log head {head}, {behind}",
        count(queues.len(), "queue", "queues")
    ))?;
    Ok(())
}

pub async fn blocked(cli: &Globals) -> Result<(), Error> {
    let store = stores::open_mode(&cli.store, OpenMode::ReadOnly).await?;
    let mut queues = all_queues(
        &*store,
        QueueFilter {
            blocked: true,
            ..Default::default()
        },
    )
    .await?;
    queues.sort_by(|a, b| natural(&a.stream, &b.stream));
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
    line(fitted(
        &[
            "STREAM",
            "POSITION",
            "BLOCKED AT",
            "LAG",
            "RETRIES",
            "ERROR",
        ],
        &rows,
        terminal_width().unwrap_or(usize::MAX),
    ))
}

pub async fn unblock(cli: &Globals, args: &UnblockArgs) -> Result<(), Error> {
    let store = stores::open_mode(&cli.store, OpenMode::Existing).await?;
    let mut names: Vec<String> = Vec::new();
    for s in &args.streams {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    let done = store.unblock(&names).await?;
    let mut unknown = Vec::new();
    for s in &names {
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
                // Reported once, on stderr, by the error below.
                unknown.push(s.clone());
                continue;
            }
        };
        if cli.json {
            json_line(&json!({"stream": s, "outcome": outcome}))?;
        } else {
            line(format!("{s}: {outcome}"))?;
        }
    }
    match unknown.len() {
        0 => Ok(()),
        1 => Err(act::Error::UnknownQueue(unknown.remove(0)).into()),
        _ => Err(act::Error::InvalidInput(format!(
            "no queues named {}",
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

pub async fn reset(cli: &Globals, args: &ResetArgs) -> Result<(), Error> {
    let store = stores::open_mode(&cli.store, OpenMode::Existing).await?;
    let exists = !store
        .queues(&QueueFilter {
            stream: Some(args.stream.clone()),
            ..Default::default()
        })
        .await?
        .is_empty();
    if !exists && !args.new {
        // A typo must not create a queue and replay the log into it.
        let targets: Vec<String> = store
            .subscriptions()
            .await?
            .into_iter()
            .filter(|s| s.retired.is_none() && s.target.as_ref().is_none_or(|t| *t == args.stream))
            .map(|s| s.name)
            .collect();
        return Err(act::Error::InvalidInput(if targets.is_empty() {
            format!("no queue named `{}`, and no reaction can target it", args.stream)
        } else {
            format!(
                "no queue named `{}`; reactions {} may target it: add --new to replay the log into a new queue",
                args.stream,
                targets.join(", ")
            )
        })
        .into());
    }
    let q = store.reset(&args.stream, args.to).await?;
    let replays: Vec<String> = store
        .replays()
        .await?
        .into_iter()
        .filter(|r| r.stream == q.stream)
        .map(|r| r.reaction)
        .collect();
    if cli.json {
        let mut v = serde_json::to_value(&q).map_err(|e| act::Error::decode("a queue", e))?;
        v["replaying"] = json!(replays);
        json_line(&v)?;
    } else if replays.is_empty() {
        line(format!(
            "{}: position {}; no reaction has correlated past it, nothing to replay (head {})",
            q.stream, q.position, q.head
        ))?;
    } else {
        line(format!(
            "{}: position {}; replaying the log into it for {} ({}); a running broker with them delivers it",
            q.stream,
            q.position,
            count(replays.len(), "reaction", "reactions"),
            replays.join(", ")
        ))?;
    }
    Ok(())
}
