//! The workloads of `act bench`. Each runs in a fresh namespace and returns
//! result rows; setup (appending a backlog to drain) is never timed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use act::{Act, Action, Actor, Append, BrokerOptions, Invariant, Message, Reaction, State, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::counting::Counting;
use super::cpu;
use super::namespace::Namespace;
use super::{rss, Row, Settings};
use act_cli::Error;

// --- a minimal state for the commit workload ---------------------------------

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Tick {
    n: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub(crate) enum TickEvent {
    Ticked { n: u64 },
}

pub(crate) struct Advance;

impl Action for Advance {
    fn name(&self) -> &str {
        "advance"
    }
}

impl State for Tick {
    type Event = TickEvent;
    type Action = Advance;
    const SNAPSHOT_EVERY: Option<u64> = Some(25);

    fn apply(&mut self, e: &TickEvent) {
        let TickEvent::Ticked { n } = e;
        self.n = *n;
    }

    fn decide(&self, _: &Advance) -> Result<Vec<TickEvent>, Invariant> {
        Ok(vec![TickEvent::Ticked { n: self.n + 1 }])
    }
}

// --- helpers -----------------------------------------------------------------

/// Appends `n` events named `name` (data from `data(i)`) in appends of
/// `chunk` events, to streams chosen by `stream(i)` (consecutive events of
/// one stream share an append). Setup: not timed.
pub(super) async fn fill(
    store: &dyn Store,
    n: usize,
    chunk: usize,
    name: &str,
    stream: impl Fn(usize) -> String,
    data: impl Fn(usize) -> Value,
) -> Result<(), Error> {
    let mut i = 0;
    while i < n {
        let s = stream(i);
        let mut messages = Vec::new();
        while i < n && messages.len() < chunk && stream(i) == s {
            messages.push(Message::new(name, data(i)));
            i += 1;
        }
        store.append(Append::new(s, messages)).await?;
    }
    Ok(())
}

/// A count-only reaction.
pub(super) fn counting(reaction: act::ReactionBuilder, counter: &Arc<AtomicU64>) -> Reaction {
    let c = counter.clone();
    reaction.handle(move |_e, _ctx| {
        c.fetch_add(1, Ordering::Relaxed);
        async { Ok(()) }
    })
}

/// The drain app: for every `Ping`, one static target and one dynamic
/// target per source stream; handlers only count.
pub(crate) fn drain_app(store: Arc<dyn Store>, counter: &Arc<AtomicU64>) -> act::Result<Act> {
    Act::builder(store)
        .reaction(counting(
            Reaction::on("Ping").named("all").to_stream("all"),
            counter,
        ))
        .reaction(counting(
            Reaction::on("Ping")
                .named("per-stream")
                .to(|e| Some(format!("q-{}", e.stream))),
            counter,
        ))
        .build()
}

pub(super) fn broker_options(s: &Settings) -> BrokerOptions {
    BrokerOptions::default()
        .concurrency(s.concurrency)
        .batch(s.batch)
        .poll(Duration::from_millis(s.poll_ms.max(1)))
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// --- workloads ---------------------------------------------------------------

/// `commit`: `n` events appended through actions, round-robin over 100
/// streams, by `writers` concurrent writers (each on its own streams).
pub(crate) async fn commit(s: &Settings, writers: usize) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "commit").await?;
    let app = Act::builder(ns.store.clone()).build()?;
    let n = s.scaled(10_000);
    rss::reset_peak();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let app = app.clone();
        let streams: Vec<usize> = (0..100).filter(|i| i % writers == w).collect();
        let count = n / writers + usize::from(w < n % writers);
        tasks.spawn(async move {
            let actor = Actor::system("bench");
            for i in 0..count {
                let stream = format!("tick-{}", streams[i % streams.len()]);
                app.act::<Tick>(&stream, &Advance, &actor).await?;
            }
            Ok::<_, act::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Check(vec![format!("a writer task failed: {e}")]))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let row = Row::new("commit", ns.backend(), n as u64, 0, writers as u64, secs);
    ns.destroy().await?;
    Ok(row)
}

/// Resets the peak memory mark, then lets one broker deliver everything
/// correlatable; the seconds it took.
async fn timed_delivery(s: &Settings, app: &Act) -> Result<f64, Error> {
    rss::reset_peak();
    let started = Instant::now();
    app.broker(broker_options(s)).settle().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// `drain`: `n` committed events, two reactions each (static + dynamic per
/// source stream), delivered by one broker; reactions/s and store calls.
pub(crate) async fn drain(s: &Settings) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "drain").await?;
    let n = s.scaled(10_000);
    fill(
        &*ns.store,
        n,
        100,
        "Ping",
        |i| format!("s{}", i % 100),
        |i| json!({ "i": i }),
    )
    .await?;
    let counter = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(Counting::new(ns.store.clone()));
    let app = drain_app(counted.clone(), &counter)?;
    let window = cpu::Snapshot::now(ns.backend() == "postgres");
    let secs = timed_delivery(s, &app).await?;
    let reactions = counter.load(Ordering::Relaxed);
    let (calls, claims) = counted.counts();
    let mut row = Row::new("drain", ns.backend(), reactions, 100 + 1, 1, secs);
    // The broker runs in this process.
    window.record(&mut row.extra, "client_cpu_us_per_reaction", reactions);
    row.extra.insert("source_events".into(), json!(n));
    row.extra.insert("store_calls".into(), json!(calls));
    row.extra.insert("claims".into(), json!(claims));
    row.extra.insert("calls".into(), json!(counted.by_method()));
    row.extra.insert(
        "reactions_per_store_call".into(),
        json!(rate(reactions, calls as f64)),
    );
    ns.destroy().await?;
    Ok(row)
}

/// `demo`: the bank demo (handlers load state and append receipts), `n`
/// deposits and withdrawals without simulated failures; delivery measured
/// after the appends.
pub(crate) async fn demo(s: &Settings) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "demo").await?;
    let n = s.scaled(20_000);
    let app = act_bank::app(ns.store.clone())?;
    let workload = act_bank::Workload {
        accounts: 100,
        events: n,
        fail_share: 0.0,
        poison: 0,
        ..Default::default()
    };
    rss::reset_peak();
    let report = workload.run(&app, Arc::new(AtomicU64::new(0))).await?;
    let started = Instant::now();
    let stats = app.broker(broker_options(s)).settle().await?;
    let secs = started.elapsed().as_secs_f64();
    let mut row = Row::new("demo", ns.backend(), stats.reactions, 101, 1, secs);
    row.extra.insert(
        "append_events_per_s".into(),
        json!(rate(
            report.events() + report.opened,
            report.elapsed.as_secs_f64()
        )),
    );
    row.extra.insert(
        "end_to_end_reactions_per_s".into(),
        json!(rate(stats.reactions, secs + report.elapsed.as_secs_f64())),
    );
    ns.destroy().await?;
    Ok(row)
}

/// `latency`: an idle broker; `n` commits, one at a time, about 100/s,
/// through a second handle on the store (another process would use one), so
/// the broker is woken by the backend's push where it has one. Latency is
/// from the moment the append returned to the handler's start.
pub(crate) async fn latency(s: &Settings) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "latency").await?;
    let writer = ns.reopen().await?;
    let n = s.scaled(500);
    let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let handled = {
        let seen = seen.clone();
        Reaction::on("Ping")
            .to_stream("latency")
            .handle(move |e, _ctx| {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(e.id, Instant::now());
                async { Ok(()) }
            })
    };
    let app = Act::builder(ns.store.clone()).reaction(handled).build()?;
    let handle = app.broker(broker_options(s)).start();
    let count = |seen: &Arc<Mutex<HashMap<i64, Instant>>>| {
        seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    };
    // Warm up: the broker is running and (where there is one) listening.
    writer
        .append(Append::new("warm", vec![Message::new("Ping", json!({}))]))
        .await?;
    let warm_until = Instant::now() + Duration::from_secs(30);
    while count(&seen) < 1 && Instant::now() < warm_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rss::reset_peak();
    let mut committed: Vec<(i64, Instant)> = Vec::with_capacity(n);
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_millis(10 * i as u64)).await;
        let e = writer
            .append(Append::new(
                "latency",
                vec![Message::new("Ping", json!({ "i": i }))],
            ))
            .await?;
        committed.push((e[0].id, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&seen) < n + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    handle.shutdown().await?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|h| h.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    let missing = n - ms.len();
    ms.sort_by(f64::total_cmp);
    let mut row = Row::new("latency", ns.backend(), ms.len() as u64, 1, 1, secs);
    row.p50_ms = Some(percentile(&ms, 0.50));
    row.p99_ms = Some(percentile(&ms, 0.99));
    row.max_ms = ms.last().copied();
    row.extra.insert("poll_ms".into(), json!(s.poll_ms));
    if missing > 0 {
        row.extra
            .insert("undelivered_within_60s".into(), json!(missing));
    }
    ns.destroy().await?;
    Ok(row)
}

/// `fanout`: `queues` queues with one event each (events appended 1,000 per
/// append to one stream; a dynamic resolver spreads them), delivered by one
/// broker.
pub(crate) async fn fanout(s: &Settings, queues: usize) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "fanout").await?;
    fill(
        &*ns.store,
        queues,
        1000,
        "Fan",
        |_| "fan".into(),
        |i| json!({ "q": i }),
    )
    .await?;
    let counter = Arc::new(AtomicU64::new(0));
    let app = Act::builder(ns.store.clone())
        .reaction(counting(
            Reaction::on("Fan").to(|e| e.data.get("q").map(|q| format!("fan-{q}"))),
            &counter,
        ))
        .build()?;
    let secs = timed_delivery(s, &app).await?;
    let row = Row::new(
        "fanout",
        ns.backend(),
        counter.load(Ordering::Relaxed),
        queues as u64,
        1,
        secs,
    );
    ns.destroy().await?;
    Ok(row)
}

/// `backlog`: one queue with `events` events, delivered by one broker.
pub(crate) async fn backlog(s: &Settings, events: usize) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "backlog").await?;
    fill(
        &*ns.store,
        events,
        1000,
        "Log",
        |_| "log".into(),
        |i| json!({ "i": i }),
    )
    .await?;
    let counter = Arc::new(AtomicU64::new(0));
    let app = Act::builder(ns.store.clone())
        .reaction(counting(Reaction::on("Log").to_stream("backlog"), &counter))
        .build()?;
    let secs = timed_delivery(s, &app).await?;
    let row = Row::new(
        "backlog",
        ns.backend(),
        counter.load(Ordering::Relaxed),
        1,
        1,
        secs,
    );
    ns.destroy().await?;
    Ok(row)
}

/// `backfill`: a reaction added to a log of `n` events (a million at
/// `--scale 1`) with `.from_beginning()`, beside a caught-up reaction that keeps
/// receiving live events (about 50/s) while the new one backfills. Reports
/// the backfill's correlation rate (events read and routed per second until
/// its checkpoint reaches the head) and the commit-to-handler latency of
/// the caught-up reaction meanwhile. Delivery of the backfilled work goes
/// on after correlation caught up; it is not timed here (`drain` measures
/// delivery).
pub(crate) async fn backfill(s: &Settings) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "backfill").await?;
    let writer = ns.reopen().await?;
    let n = s.scaled(1_000_000);
    fill(
        &*ns.store,
        n,
        1000,
        "Ping",
        |i| format!("s{}", (i / 1000) % 100),
        |i| json!({ "i": i }),
    )
    .await?;
    let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let live = {
        let seen = seen.clone();
        Reaction::on("Probe")
            .named("live")
            .to_stream("live")
            .from_now()
            .handle(move |e, _ctx| {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(e.id, Instant::now());
                async { Ok(()) }
            })
    };
    // Version 1: the caught-up reaction alone, registered at the head.
    let v1 = Act::builder(ns.store.clone())
        .reaction(live.clone())
        .build()?;
    v1.register().await?;
    let counter = Arc::new(AtomicU64::new(0));
    let v2 = Act::builder(ns.store.clone())
        .reaction(live)
        .reaction(counting(
            Reaction::on("Ping")
                .named("history")
                .to(|e| Some(format!("h-{}", e.stream)))
                .from_beginning(),
            &counter,
        ))
        .build()?;
    v2.register().await?;
    rss::reset_peak();
    let handle = v2.broker(broker_options(s)).start();
    let started = Instant::now();
    let head = ns.store.head().await?;
    let mut committed: Vec<(i64, Instant)> = Vec::new();
    let mut next_probe = tokio::time::Instant::now();
    let caught_up = loop {
        let subs = ns.store.subscriptions().await?;
        let at = subs
            .iter()
            .find(|x| x.name == "history")
            .map_or(0, |x| x.checkpoint);
        if at >= head {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(Error::Check(vec![format!(
                "the backfill did not catch up within an hour (at {at} of {head})"
            )]));
        }
        // Live traffic while it runs: one probe every 20 ms.
        tokio::time::sleep_until(next_probe).await;
        next_probe += Duration::from_millis(20);
        let e = writer
            .append(Append::new("probe", vec![Message::new("Probe", json!({}))]))
            .await?;
        committed.push((e[0].id, Instant::now()));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || seen.lock().unwrap_or_else(|p| p.into_inner()).len();
    while count() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = handle.shutdown().await?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|h| h.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    let missing = committed.len() - ms.len();
    ms.sort_by(f64::total_cmp);
    let secs = caught_up.as_secs_f64();
    let mut row = Row::new("backfill", ns.backend(), n as u64, 100 + 1, 1, secs);
    row.p50_ms = Some(percentile(&ms, 0.50));
    row.p99_ms = Some(percentile(&ms, 0.99));
    row.max_ms = ms.last().copied();
    row.extra
        .insert("live_events".into(), json!(committed.len()));
    row.extra
        .insert("backfilled".into(), json!(stats.backfilled));
    row.extra.insert(
        "delivered_during_backfill".into(),
        json!(counter.load(Ordering::Relaxed)),
    );
    if missing > 0 {
        row.extra
            .insert("live_undelivered_within_60s".into(), json!(missing));
    }
    ns.destroy().await?;
    Ok(row)
}
