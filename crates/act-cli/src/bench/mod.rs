//! `act bench`: how fast act is on a store, measured by workloads anyone can
//! rerun, next to the backend's own limit measured in the same run.
//!
//! Workloads (`--workload`, repeatable; all by default):
//! `limit`, `commit` (1 and 8 writers), `drain`, `demo`, `latency`, `scale`
//! (1, 2, 4 and 8 brokers; `--delay-ms` puts a network delay between them
//! and the server), `fanout` (10,000 and 100,000 queues), `backlog`
//! (20,000 and 200,000 events in one queue), and, only when asked for,
//! `backfill` (a reaction added to a log of 1,000,000 events while a
//! caught-up one takes live events).
//! `--scale` multiplies the event
//! counts. Each workload runs in a fresh namespace of the store (a new SQLite
//! file, PostgreSQL schema or Redis prefix) removed afterwards.
//!
//! Output: one JSON object per result with `--json` (fields in BENCH.md), a
//! table otherwise. For delivery workloads `events` counts reactions
//! delivered and `events_per_s` is reactions per second.

mod counting;
mod cpu;
mod limits;
mod namespace;
mod proxy;
mod rss;
mod scale;
mod time;
mod workloads;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::bank::{BenchArgs, BenchWorkerArgs};
use act_cli::output::{bar, json_line, line, table, thousands};
use act_cli::Error;
use act_cli::Globals;

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// The backend's own limit (see BENCH.md).
    Limit,
    /// Appends through actions: 1 and 8 writers.
    Commit,
    /// Delivery with count-only handlers, one broker.
    Drain,
    /// The bank demo end to end.
    Demo,
    /// Commit → handler latency of an idle broker.
    Latency,
    /// Drain with 1, 2, 4 and 8 brokers (`--delay-ms`: across a network delay).
    Scale,
    /// Many queues with one event each.
    Fanout,
    /// One queue with a long backlog.
    Backlog,
    /// A reaction added to a log of 1,000,000 events, beside live traffic.
    Backfill,
    /// Timer lateness under a steady load.
    Timers,
    /// A SQL read model replayed over 1,000,000 events: per-event versus
    /// batch handler (SQLite and PostgreSQL).
    Projection,
}

/// What the workloads share.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub store: String,
    pub scale: f64,
    pub concurrency: usize,
    pub batch: usize,
    pub poll_ms: u64,
    /// `--delay-ms`: `scale`'s workers reach the server through a proxy
    /// that holds every chunk this long in each direction.
    pub delay: Option<std::time::Duration>,
}

impl Settings {
    /// `n` times `--scale`, at least 1.
    pub fn scaled(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }
}

/// One result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub workload: &'static str,
    pub store: &'static str,
    pub events: u64,
    pub queues: u64,
    pub workers: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    pub rss_mb: f64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Row {
    pub fn new(
        workload: &'static str,
        store: &'static str,
        events: u64,
        queues: u64,
        workers: u64,
        seconds: f64,
    ) -> Row {
        Row {
            workload,
            store,
            events,
            queues,
            workers,
            seconds,
            events_per_s: if seconds > 0.0 {
                events as f64 / seconds
            } else {
                0.0
            },
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            rss_mb: rss::peak_mb(),
            extra: Map::new(),
        }
    }
}

/// Runs the chosen workloads and prints their rows.
pub async fn run(cli: &Globals, args: &BenchArgs) -> Result<(), Error> {
    let s = Settings {
        store: cli.store.clone(),
        scale: args.scale.clamp(0.001, 100.0),
        concurrency: args.concurrency.max(1),
        batch: args.batch.max(1),
        poll_ms: args.poll_ms,
        delay: args
            .delay_ms
            .filter(|ms| *ms > 0.0)
            .map(|ms| std::time::Duration::from_secs_f64(ms.min(10_000.0) / 1000.0)),
    };
    let recorder = if args.observe {
        Some(act_cli::observe::install_recorder()?)
    } else {
        None
    };
    let all = Workload::value_variants().to_vec();
    let chosen: Vec<Workload> = if args.workloads.is_empty() {
        // The million-event workloads run only when asked for.
        all.into_iter()
            .filter(|w| !matches!(w, Workload::Backfill | Workload::Projection))
            .collect()
    } else {
        all.into_iter()
            .filter(|w| args.workloads.contains(w))
            .collect()
    };
    let pb = bar(cli.json, Some(chosen.len() as u64), "bench");
    let mut rows: Vec<Row> = Vec::new();
    for w in chosen {
        pb.set_message(format!("{w:?}").to_lowercase());
        let started = Instant::now();
        let new: Vec<Row> = match w {
            Workload::Limit => limits::limits(&s).await?,
            Workload::Commit => vec![
                workloads::commit(&s, 1).await?,
                workloads::commit(&s, 8).await?,
            ],
            Workload::Drain => vec![workloads::drain(&s).await?],
            Workload::Backfill => vec![workloads::backfill(&s).await?],
            Workload::Demo => vec![workloads::demo(&s).await?],
            Workload::Latency => vec![workloads::latency(&s).await?],
            Workload::Scale => {
                let mut r = Vec::new();
                for n in scale::BROKERS {
                    r.push(scale::scale(&s, n).await?);
                }
                r
            }
            Workload::Fanout => vec![
                workloads::fanout(&s, s.scaled(10_000)).await?,
                workloads::fanout(&s, s.scaled(100_000)).await?,
            ],
            Workload::Timers => vec![time::timers(&s).await?],
            Workload::Projection => time::projection(&s).await?,
            Workload::Backlog => vec![
                workloads::backlog(&s, s.scaled(20_000)).await?,
                workloads::backlog(&s, s.scaled(200_000)).await?,
            ],
        };
        tracing::info!(workload = ?w, seconds = started.elapsed().as_secs_f64(), "workload done");
        for mut row in new {
            compare(&mut row, &rows);
            if cli.json {
                pb.suspend(|| json_line(&row))?;
            }
            rows.push(row);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let Some(recorder) = recorder {
        let exposition = recorder.render();
        let series = exposition.lines().filter(|l| l.starts_with("act_")).count();
        tracing::info!(series, "metrics recorded");
        if series == 0 {
            return Err(Error::Failed(
                "--observe recorded no act_ metric: the bench measured nothing".into(),
            ));
        }
    }
    if !cli.json {
        print_table(&rows)?;
    }
    Ok(())
}

/// Puts a row next to the limit measured earlier in the same run: commits
/// against the one-row transaction rate (same number of clients), deliveries
/// on memory against the empty-handler call rate.
fn compare(row: &mut Row, earlier: &[Row]) {
    let limit = |workers: Option<u64>| {
        earlier
            .iter()
            .find(|r| r.workload == "limit" && workers.is_none_or(|w| r.workers == w))
            .map(|r| r.events_per_s)
    };
    let found = match (row.workload, row.store) {
        ("commit", "memory") => None,
        ("commit", _) => limit(Some(row.workers)),
        ("drain" | "scale" | "fanout" | "backlog", "memory") => limit(None),
        _ => None,
    };
    if let Some(l) = found.filter(|l| *l > 0.0) {
        row.extra.insert("limit_per_s".into(), json!(l));
        row.extra
            .insert("ratio_to_limit".into(), json!(row.events_per_s / l));
    }
}

fn print_table(rows: &[Row]) -> Result<(), Error> {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.workload.to_string(),
                r.store.to_string(),
                r.workers.to_string(),
                r.queues.to_string(),
                r.events.to_string(),
                format!("{:.2}", r.seconds),
                thousands(r.events_per_s),
                ms(r.p50_ms),
                ms(r.p99_ms),
                ms(r.max_ms),
                format!("{:.0}", r.rss_mb),
                r.extra
                    .get("ratio_to_limit")
                    .and_then(Value::as_f64)
                    .map_or("-".into(), |x| format!("{x:.2}")),
            ]
        })
        .collect();
    line(table(
        &[
            "WORKLOAD", "STORE", "WORKERS", "QUEUES", "EVENTS", "SECONDS", "EVENTS/S", "P50 MS",
            "P99 MS", "MAX MS", "RSS MB", "× LIMIT",
        ],
        &body,
    ))
}

/// `act bench-worker` (hidden): one broker of the scale app until everything
/// is delivered; prints `{"reactions": N, …}`. `act bench --workload scale`
/// starts several.
pub async fn worker(cli: &Globals, args: &BenchWorkerArgs) -> Result<(), Error> {
    let store = act_cli::stores::open(&cli.store).await?;
    let counting = Arc::new(counting::Counting::new(store));
    let counter = Arc::new(AtomicU64::new(0));
    let app = scale::scale_app(counting.clone(), &counter)?;
    let options = act::BrokerOptions::default()
        .concurrency(args.concurrency)
        .batch(args.batch)
        .poll(std::time::Duration::from_millis(args.poll_ms.max(1)));
    // Opened and ready: the bench starts its clock when every worker is,
    // so process start, connections and schema checks are not counted.
    json_line(&json!({ "ready": true }))?;
    tokio::task::spawn_blocking(|| {
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).map(drop)
    })
    .await
    .map_err(|e| Error::Check(vec![format!("waiting for the bench's go: {e}")]))?
    .map_err(Error::Output)?;
    // CPU from the go: opening the store is not the delivery's cost.
    let from = cpu::own_cpu();
    let stats = app.broker(options).settle().await?;
    let (calls, claims) = counting.counts();
    json_line(&json!({
        "reactions": stats.reactions,
        "store_calls": calls,
        "claims": claims,
        "calls": counting.by_method(),
        "cpu_s": cpu::own_cpu() - from,
        "stats": stats,
    }))
}
