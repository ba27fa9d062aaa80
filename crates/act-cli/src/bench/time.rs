//! Workloads of time and read models: how late timers fire under a steady
//! load, and how fast a projection into a SQL table replays the log with a
//! per-event handler and with a batch handler.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use act::timer::Timer;
use act::{Act, Append, Event, HandlerError, Message, Query, Reaction};
use serde_json::json;
use tokio::sync::Mutex;

use super::namespace::Namespace;
use super::workloads::{broker_options, percentile};
use super::{rss, Row, Settings};
use act_cli::Error;

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Check(vec![format!("{what}: {e}")])
}

/// `timers`: `n` timers due 5 ms apart, scheduled ahead, while a writer
/// appends 200 events/s that another reaction handles. Lateness is the
/// firing event's `created` (store clock) minus the timer's time.
pub(crate) async fn timers(s: &Settings) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, "timers").await?;
    let n = s.scaled(1_000);
    let fired = Arc::new(AtomicU64::new(0));
    let load = Arc::new(AtomicU64::new(0));
    let app = {
        let (fired, load) = (fired.clone(), load.clone());
        Act::builder(ns.store.clone())
            .timers()
            .reaction(Reaction::on("Due").to_stream("due").handle(move |_, _| {
                fired.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            }))
            .reaction(
                Reaction::on("Ping")
                    .to(|e| Some(format!("load-{}", e.stream)))
                    .handle(move |_, _| {
                        load.fetch_add(1, Ordering::Relaxed);
                        async { Ok(()) }
                    }),
            )
            .build()?
    };
    app.register().await?;
    let handle = app.broker(broker_options(s)).start();
    // The steady load: 200 events/s over 20 streams, until the timers fired.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (ns.reopen().await?, stop.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(start + Duration::from_millis(5 * i)).await;
                let msg = Message::new("Ping", json!({ "i": i }));
                store
                    .append(Append::new(format!("s{}", i % 20), vec![msg]))
                    .await?;
                i += 1;
            }
            Ok::<u64, act::Error>(i)
        })
    };
    rss::reset_peak();
    let base = chrono::Utc::now() + chrono::Duration::seconds(3);
    let started = Instant::now();
    for i in 0..n {
        let at = base + chrono::Duration::milliseconds(5 * i as i64);
        let due = Message::new("Due", json!({ "i": i, "at": at }));
        app.schedule(Timer::at(format!("bench-{i}"), at, due))
            .await?;
    }
    let scheduled_in = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (fired.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let load_events = writer.await.map_err(|e| failed("the load writer", e))??;
    let secs = started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    let events = ns
        .store
        .query(
            &Query::new()
                .stream_pattern(format!("{}*", act::timer::STREAM_PREFIX))
                .names(["Due"]),
        )
        .await?;
    let mut ms: Vec<f64> = events
        .iter()
        .filter_map(|e| {
            let at: chrono::DateTime<chrono::Utc> =
                serde_json::from_value(e.data.get("at")?.clone()).ok()?;
            Some((e.meta.created - at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let early = ms.iter().filter(|&&m| m < 0.0).count();
    let mut row = Row::new("timers", ns.backend(), ms.len() as u64, n as u64, 1, secs);
    row.p50_ms = Some(percentile(&ms, 0.50));
    row.p99_ms = Some(percentile(&ms, 0.99));
    row.max_ms = ms.last().copied();
    row.extra
        .insert("scheduled_in_s".into(), json!(scheduled_in));
    row.extra.insert("load_events".into(), json!(load_events));
    row.extra
        .insert("load_handled".into(), json!(load.load(Ordering::Relaxed)));
    row.extra.insert("fired_early".into(), json!(early));
    if ms.len() < n {
        row.extra
            .insert("not_fired_in_120s".into(), json!(n - ms.len()));
    }
    ns.destroy().await?;
    if early > 0 {
        return Err(Error::Check(vec![format!(
            "{early} timers fired before their time"
        )]));
    }
    Ok(row)
}

/// How a projection writes: one commit per event, one per window, or one
/// per window in the store's own transaction with the acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    PerEvent,
    Batch,
    Transactional,
}

impl Style {
    fn name(self) -> &'static str {
        match self {
            Style::PerEvent => "per_event",
            Style::Batch => "batch",
            Style::Transactional => "transactional_batch",
        }
    }
}

/// The store of a namespace as its concrete type, for `project`.
enum Concrete {
    Sqlite(Arc<act_sqlite::SqliteStore>, std::path::PathBuf),
    Postgres(Arc<act_pg::PgStore>, String, String),
}

impl Concrete {
    async fn open(ns: &Namespace) -> Result<Concrete, Error> {
        if let Some(file) = ns.sqlite_file() {
            let store = Arc::new(act_sqlite::SqliteStore::open(file).await?);
            let c = rusqlite::Connection::open(file).map_err(|e| failed("open", e))?;
            c.busy_timeout(Duration::from_secs(60))
                .map_err(|e| failed("busy_timeout", e))?;
            c.execute_batch(
                "CREATE TABLE projection_tx (stream TEXT PRIMARY KEY, total INTEGER NOT NULL, last INTEGER NOT NULL)",
            )
            .map_err(|e| failed("create the projection table", e))?;
            return Ok(Concrete::Sqlite(store, file.clone()));
        }
        let store = Arc::new(act_pg::PgStore::open(&ns.url).await?);
        let (config, options) = act_pg::parse_url(&ns.url)?;
        let table = format!("{}.projection_tx", options.schema);
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| failed("connect for the projection", e))?;
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (stream text PRIMARY KEY, total bigint NOT NULL, last bigint NOT NULL)"
            ))
            .await
            .map_err(|e| failed("create the projection table", e))?;
        drop(client);
        let _ = driver.await;
        Ok(Concrete::Postgres(store, table, ns.url.clone()))
    }

    /// Applies `events` and acknowledges them in one transaction.
    async fn apply(&self, ctx: &act::Context, events: Vec<Arc<Event>>) -> Result<(), HandlerError> {
        let rows = totals(&events);
        match self {
            Concrete::Sqlite(store, _) => {
                store
                    .project(ctx, &events, move |tx| {
                        let mut up = tx.prepare_cached(
                            &UPSERT_SQLITE.replace("projection", "projection_tx"),
                        )?;
                        for (stream, i, id) in &rows {
                            up.execute(rusqlite::params![stream, i, id])?;
                        }
                        Ok(())
                    })
                    .await
            }
            Concrete::Postgres(store, table, _) => {
                let sql = format!(
                    "INSERT INTO {table} (stream, total, last) VALUES ($1, $2, $3)
                     ON CONFLICT (stream) DO UPDATE SET total = {table}.total + excluded.total, last = excluded.last"
                );
                store
                    .project(ctx, &events, async |tx| {
                        let up = tx.prepare(&sql).await?;
                        for (stream, i, id) in &rows {
                            tx.execute(&up, &[stream, i, id]).await?;
                        }
                        Ok(())
                    })
                    .await
            }
        }
    }

    async fn total(&self) -> Result<i64, Error> {
        match self {
            Concrete::Sqlite(_, file) => {
                let c = rusqlite::Connection::open(file).map_err(|e| failed("open", e))?;
                c.query_row(
                    "SELECT coalesce(sum(total), 0) FROM projection_tx",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| failed("read the projection", e))
            }
            Concrete::Postgres(_, table, url) => {
                let (config, _) = act_pg::parse_url(url)?;
                let (client, conn) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| failed("connect for the projection", e))?;
                let driver = tokio::spawn(conn);
                let row = client
                    .query_one(
                        &format!("SELECT coalesce(sum(total), 0)::bigint FROM {table}"),
                        &[],
                    )
                    .await
                    .map_err(|e| failed("read the projection", e))?;
                drop(client);
                let _ = driver.await;
                Ok(row.get(0))
            }
        }
    }
}

/// A SQL table the projection writes, in the user's own database (SQLite:
/// a file beside the store; PostgreSQL: the namespace's schema), through
/// `concurrency` connections, one per group of queues.
#[derive(Clone)]
enum Sink {
    Sqlite(Vec<Arc<std::sync::Mutex<rusqlite::Connection>>>),
    Postgres(Vec<Arc<Mutex<tokio_postgres::Client>>>, String),
}

/// What a window adds to the read model: per stream, the sum of the
/// events' `i` and the last event id (one row per stream: a window is one
/// queue, so one stream, and a per-event call one event).
fn totals(events: &[Arc<Event>]) -> Vec<(String, i64, i64)> {
    let mut out: Vec<(String, i64, i64)> = Vec::new();
    for e in events {
        let i = e.data["i"].as_i64().unwrap_or(0);
        match out.iter_mut().find(|(s, _, _)| *s == e.stream) {
            Some(row) => {
                row.1 += i;
                row.2 = row.2.max(e.id);
            }
            None => out.push((e.stream.clone(), i, e.id)),
        }
    }
    out
}

const UPSERT_SQLITE: &str = "INSERT INTO projection (stream, total, last) VALUES (?1, ?2, ?3)
     ON CONFLICT (stream) DO UPDATE SET total = total + excluded.total, last = excluded.last";

impl Sink {
    async fn open(ns: &Namespace, s: &Settings, table: &str) -> Result<Sink, Error> {
        let n = s.concurrency.max(1);
        if let Some(store_file) = ns.sqlite_file() {
            let mut file = store_file.clone().into_os_string();
            file.push(format!(".{table}.db"));
            let mut conns = Vec::new();
            for i in 0..n {
                let c = rusqlite::Connection::open(&file).map_err(|e| failed("open", e))?;
                c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                    .map_err(|e| failed("WAL", e))?;
                c.pragma_update(None, "synchronous", "FULL")
                    .map_err(|e| failed("synchronous", e))?;
                c.busy_timeout(Duration::from_secs(60))
                    .map_err(|e| failed("busy_timeout", e))?;
                if i == 0 {
                    c.execute_batch(
                        "CREATE TABLE projection (stream TEXT PRIMARY KEY, total INTEGER NOT NULL, last INTEGER NOT NULL)",
                    )
                    .map_err(|e| failed("create the projection table", e))?;
                }
                conns.push(Arc::new(std::sync::Mutex::new(c)));
            }
            return Ok(Sink::Sqlite(conns));
        }
        let (config, options) = act_pg::parse_url(&ns.url)?;
        let table = format!("{}.{table}", options.schema);
        let mut clients = Vec::new();
        for i in 0..n {
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| failed("connect for the projection", e))?;
            tokio::spawn(conn);
            if i == 0 {
                client
                    .batch_execute(&format!(
                        "CREATE TABLE {table} (stream text PRIMARY KEY, total bigint NOT NULL, last bigint NOT NULL)"
                    ))
                    .await
                    .map_err(|e| failed("create the projection table", e))?;
            }
            clients.push(Arc::new(Mutex::new(client)));
        }
        Ok(Sink::Postgres(clients, table))
    }

    /// Applies `events` (of one queue) in one transaction.
    async fn apply(&self, queue: &str, events: Vec<Arc<Event>>) -> Result<(), HandlerError> {
        let slot = queue.bytes().map(usize::from).sum::<usize>();
        match self {
            Sink::Sqlite(conns) => {
                let c = conns[slot % conns.len()].clone();
                tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
                    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    {
                        let mut up = tx.prepare_cached(UPSERT_SQLITE)?;
                        for (stream, sum, last) in totals(&events) {
                            up.execute(rusqlite::params![stream, sum, last])?;
                        }
                    }
                    tx.commit()
                })
                .await
                .map_err(HandlerError::transient)?
                .map_err(HandlerError::transient)
            }
            Sink::Postgres(clients, table) => {
                let c = clients[slot % clients.len()].clone();
                let mut c = c.lock().await;
                let tx = c.transaction().await.map_err(HandlerError::transient)?;
                let up = tx
                    .prepare(&format!(
                        "INSERT INTO {table} (stream, total, last) VALUES ($1, $2, $3)
                         ON CONFLICT (stream) DO UPDATE SET total = {table}.total + excluded.total, last = excluded.last"
                    ))
                    .await
                    .map_err(HandlerError::transient)?;
                for (stream, sum, last) in totals(&events) {
                    tx.execute(&up, &[&stream, &sum, &last])
                        .await
                        .map_err(HandlerError::transient)?;
                }
                tx.commit().await.map_err(HandlerError::transient)
            }
        }
    }

    /// The sum of every stream's total (to check the projection).
    async fn total(&self) -> Result<i64, Error> {
        match self {
            Sink::Sqlite(conns) => {
                let c = conns[0].lock().unwrap_or_else(|p| p.into_inner());
                c.query_row("SELECT coalesce(sum(total), 0) FROM projection", [], |r| {
                    r.get(0)
                })
                .map_err(|e| failed("read the projection", e))
            }
            Sink::Postgres(clients, table) => {
                let c = clients[0].lock().await;
                let row = c
                    .query_one(
                        &format!("SELECT coalesce(sum(total), 0)::bigint FROM {table}"),
                        &[],
                    )
                    .await
                    .map_err(|e| failed("read the projection", e))?;
                Ok(row.get(0))
            }
        }
    }

    fn remove(&self) {
        if let Sink::Sqlite(conns) = self {
            if let Some(path) = conns[0]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .path()
                .map(str::to_string)
            {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
    }
}

/// `projection`: a read model (a running total per stream) over a log of
/// `n` events (100 streams) replayed from the beginning into a SQL table,
/// with a per-event handler (one upsert and one transaction per event, in a
/// database of its own), a batch handler (one upsert and one transaction per
/// claimed window) and a transactional batch handler (the same, in the
/// store's own database with the acknowledgement: `project`), in one run on
/// the same log. SQLite and PostgreSQL only.
pub(crate) async fn projection(s: &Settings) -> Result<Vec<Row>, Error> {
    let ns = Namespace::fresh(&s.store, "projection").await?;
    if !matches!(ns.backend(), "sqlite" | "postgres") {
        ns.destroy().await?;
        return Ok(Vec::new());
    }
    let n = s.scaled(1_000_000);
    let mut i = 0;
    while i < n {
        let stream = format!("s{}", (i / 1000) % 100);
        let messages = (i..(i + 1000).min(n))
            .map(|k| Message::new("Ping", json!({ "i": k })))
            .collect();
        ns.store.append(Append::new(stream, messages)).await?;
        i += 1000;
    }
    let expected: i64 = (0..n as i64).sum();
    let mut rows = Vec::new();
    for style in [Style::PerEvent, Style::Batch, Style::Transactional] {
        let builder = Reaction::on("Ping")
            .named(format!("projection-{}", style.name()))
            .to(|e| Some(format!("p-{}", e.stream)))
            .from_beginning();
        let (reaction, sink) = match style {
            Style::Transactional => {
                let c = Arc::new(Concrete::open(&ns).await?);
                let r = {
                    let c = c.clone();
                    builder.handle_batch(move |events, ctx| {
                        let c = c.clone();
                        async move { c.apply(&ctx, events).await }
                    })
                };
                (r, Err(c))
            }
            _ => {
                let sink = Sink::open(&ns, s, &format!("projection_{}", style.name())).await?;
                let r = {
                    let sink = sink.clone();
                    if style == Style::PerEvent {
                        builder.handle(move |e, ctx| {
                            let sink = sink.clone();
                            async move { sink.apply(ctx.stream(), vec![e]).await }
                        })
                    } else {
                        builder.handle_batch(move |events, ctx| {
                            let sink = sink.clone();
                            async move { sink.apply(ctx.stream(), events).await }
                        })
                    }
                };
                (r, Ok(sink))
            }
        };
        let app = Act::builder(ns.store.clone()).reaction(reaction).build()?;
        app.register().await?;
        rss::reset_peak();
        let started = Instant::now();
        let stats = app.broker(broker_options(s)).settle().await?;
        let secs = started.elapsed().as_secs_f64();
        let total = match &sink {
            Ok(sink) => {
                let t = sink.total().await?;
                sink.remove();
                t
            }
            Err(c) => c.total().await?,
        };
        if total != expected {
            return Err(Error::Check(vec![format!(
                "the {} projection holds {total}, expected {expected}",
                style.name()
            )]));
        }
        let mut row = Row::new("projection", ns.backend(), stats.events, 100, 1, secs);
        row.extra.insert("style".into(), json!(style.name()));
        row.extra.insert("batch".into(), json!(s.batch));
        rows.push(row);
    }
    if let [each, rest @ ..] = rows.as_mut_slice() {
        for row in rest {
            let ratio = row.events_per_s / each.events_per_s.max(f64::MIN_POSITIVE);
            row.extra
                .insert("x_per_event".into(), json!((ratio * 100.0).round() / 100.0));
        }
    }
    ns.destroy().await?;
    Ok(rows)
}
