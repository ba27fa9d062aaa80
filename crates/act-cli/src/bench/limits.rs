//! The limit of each backend on this machine, measured in the same run as
//! act's figures so they can be compared as ratios:
//!
//! - memory: how many empty async handler calls one core makes per second
//!   (a boxed future through an `Arc<dyn Fn>`, as act calls handlers);
//! - SQLite: one-row INSERT transactions per second in WAL mode with
//!   `synchronous=FULL`, the settings act-sqlite uses;
//! - PostgreSQL: one-row INSERT transactions per second from 1 and from 8
//!   connections, the same script as `pgbench -f` with one INSERT.
//!
//! Redis has no limit here; BENCH.md uses `redis-benchmark`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::namespace::Namespace;
use super::{Row, Settings};
use act_cli::Error;

/// The limit rows for the store of `s` (none for Redis).
pub(crate) async fn limits(s: &Settings) -> Result<Vec<Row>, Error> {
    let ns = Namespace::fresh(&s.store, "limit").await?;
    let rows = match ns.backend() {
        "memory" => vec![empty_handler_calls(s).await],
        "sqlite" => {
            let dir = ns.sqlite_file().and_then(|f| f.parent()).map_or_else(
                || std::path::PathBuf::from("."),
                std::path::Path::to_path_buf,
            );
            vec![sqlite_inserts(s, dir).await?]
        }
        "postgres" => {
            let mut rows = Vec::new();
            for clients in [1, 8] {
                rows.push(postgres_inserts(s, &ns.url, clients).await?);
            }
            rows
        }
        _ => Vec::new(),
    };
    ns.destroy().await?;
    Ok(rows)
}

type EmptyHandler =
    Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), act::HandlerError>> + Send + Sync>;

async fn empty_handler_calls(s: &Settings) -> Row {
    let n = s.scaled(2_000_000) as u64;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let handler: EmptyHandler = Arc::new(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    });
    let started = Instant::now();
    for i in 0..n {
        let _ = handler(i).await;
    }
    let mut row = Row::new(
        "limit",
        "memory",
        calls.load(Ordering::Relaxed),
        0,
        1,
        started.elapsed().as_secs_f64(),
    );
    row.extra.insert(
        "what".into(),
        "empty async handler calls on one core".into(),
    );
    row
}

async fn sqlite_inserts(s: &Settings, dir: std::path::PathBuf) -> Result<Row, Error> {
    let n = s.scaled(3_000);
    let file = dir.join(format!("act-bench-limit-{:08x}.db", fastrand::u32(..)));
    let f = file.clone();
    let secs = tokio::task::spawn_blocking(move || -> rusqlite::Result<f64> {
        let c = rusqlite::Connection::open(&f)?;
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        c.pragma_update(None, "synchronous", "FULL")?;
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")?;
        let value = "x".repeat(100);
        let started = Instant::now();
        for _ in 0..n {
            c.execute_batch("BEGIN IMMEDIATE")?;
            c.prepare_cached("INSERT INTO t (v) VALUES (?1)")?
                .execute([&value])?;
            c.execute_batch("COMMIT")?;
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await
    .map_err(|e| Error::Check(vec![format!("the SQLite limit task failed: {e}")]))?
    .map_err(|e| Error::Check(vec![format!("the SQLite limit failed: {e}")]))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = file.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let mut row = Row::new("limit", "sqlite", n as u64, 0, 1, secs);
    row.extra.insert(
        "what".into(),
        "one-row INSERT transactions, WAL, synchronous=FULL".into(),
    );
    Ok(row)
}

async fn postgres_inserts(s: &Settings, url: &str, clients: usize) -> Result<Row, Error> {
    let (config, options) = act_pg::parse_url(url)?;
    let table = format!("{}.limit_{clients}", options.schema);
    let run_for = Duration::from_secs_f64((3.0 * s.scale).max(0.5));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut setup = true;
    for _ in 0..clients {
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| Error::Check(vec![format!("connect for the PostgreSQL limit: {e}")]))?;
        let driver = tokio::spawn(conn);
        if setup {
            client
                .batch_execute(&format!(
                    "CREATE TABLE {table} (id bigserial PRIMARY KEY, v text NOT NULL)"
                ))
                .await
                .map_err(|e| {
                    Error::Check(vec![format!("create the PostgreSQL limit table: {e}")])
                })?;
            setup = false;
        }
        let done = done.clone();
        let sql = format!("INSERT INTO {table} (v) VALUES (repeat('x', 100))");
        tasks.spawn(async move {
            let stmt = client.prepare(&sql).await?;
            let until = Instant::now() + run_for;
            while Instant::now() < until {
                client.execute(&stmt, &[]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        });
    }
    let started = Instant::now();
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Check(vec![format!("a PostgreSQL limit task failed: {e}")]))?
            .map_err(|e| Error::Check(vec![format!("the PostgreSQL limit failed: {e}")]))?;
    }
    let mut row = Row::new(
        "limit",
        "postgres",
        done.load(Ordering::Relaxed),
        0,
        clients as u64,
        started.elapsed().as_secs_f64(),
    );
    row.extra.insert(
        "what".into(),
        "one-row INSERT transactions (like pgbench with one INSERT)".into(),
    );
    Ok(row)
}
