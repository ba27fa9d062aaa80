//! # act-sqlite
//!
//! The SQLite backend of act: the event log and the queue store in one file,
//! with no server. It is the embedded default of the `act` command
//! (`sqlite://act.db`).
//!
//! - **Crash safety.** WAL journal with `synchronous=FULL` for appends: a
//!   committed append is on disk before `append` returns and survives power
//!   loss. Queue bookkeeping commits with `NORMAL` unless
//!   [`SqliteOptions::fsync_queue_writes`]: a power loss may undo its last
//!   writes, which redelivers events and loses none (docs/sqlite.md). Every
//!   write (append, enqueue, claim, settle…) is one `BEGIN IMMEDIATE`
//!   transaction, so a `kill -9` at any moment leaves either all of it or none.
//! - **Several processes on one file.** `BEGIN IMMEDIATE` takes the write lock
//!   before reading, so two processes cannot claim the same queue; leases,
//!   fencing tokens and retry times live in the file and use the machine's
//!   clock. A writer that finds the lock taken waits and retries with backoff
//!   (up to 30 s) instead of failing.
//! - **Never on the async runtime.** Connections live on dedicated threads: one
//!   writer, a few readers (queries read WAL snapshots in parallel with
//!   writes), and a watcher that polls `PRAGMA data_version` (a read of shared
//!   memory, no disk I/O) every few milliseconds to wake brokers when another
//!   process commits.
//! - **Schema.** Numbered migrations, recorded in `act_migrations`, applied
//!   under the write lock. A file that is not an act-rs database, is corrupt,
//!   or was made by a newer act-rs is a clear error naming the file, never a
//!   panic or a silent re-create.
//!
//! rusqlite 0.39 with its bundled SQLite: it links `libsqlite3-sys` 0.37, the
//! version sqlx 0.9 uses, so an application can use both.
//!
//! ```no_run
//! # async fn demo() -> act::Result<()> {
//! let store = act_sqlite::SqliteStore::open("act.db").await?;
//! # Ok(()) }
//! ```

mod error;
mod events;
mod lanes;
mod queues;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use act::clock::{Clock, SystemClock};
use act::{
    Append, Batch, Claim, Error, Event, EventStore, LeaseRef, Query, QueueFilter, QueueState,
    QueueStore, Rejection, Settlement, Work,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

use lanes::{Lane, Sync};
pub use schema::SCHEMA_VERSION;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Reader connections (each on its own thread).
    pub readers: usize,
    /// How long one SQLite call waits for a lock before the lane's own
    /// backoff takes over.
    pub busy_timeout: Duration,
    /// How often the watcher looks for commits by other processes
    /// (`PRAGMA data_version`); `None` disables cross-process wake-ups (brokers
    /// then rely on in-process wake-ups and polling).
    pub watch_every: Option<Duration>,
    /// Whether queue bookkeeping (correlation, claims, acks, retries,
    /// blocks, lease renewals and releases) is fsynced like appends. Appends,
    /// `unblock` and `reset` always are. When false (the default) those
    /// writes commit with `synchronous=NORMAL`: a power loss may undo the
    /// last of them, which only redelivers events (see docs/sqlite.md).
    pub fsync_queue_writes: bool,
    /// The store's clock (leases, retry times, `created`).
    pub clock: Arc<dyn Clock>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            readers: 2,
            busy_timeout: Duration::from_secs(5),
            watch_every: Some(Duration::from_millis(2)),
            fsync_queue_writes: false,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Both ports on one SQLite file. Cheap to share behind an `Arc`; dropping
/// the last handle closes the connections.
pub struct SqliteStore {
    name: Arc<str>,
    path: PathBuf,
    writer: Lane,
    /// How queue bookkeeping reaches the disk.
    queue_sync: Sync,
    readers: Lane,
    clock: Arc<dyn Clock>,
    wake: Arc<watch::Sender<u64>>,
    // Dropping it stops the watcher thread.
    _watcher: Option<std::sync::mpsc::Sender<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("store", &self.name)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` with default
    /// options, and brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> act::Result<Self> {
        SqliteStore::open_with(path, SqliteOptions::default()).await
    }

    /// Opens a store from a URL: `sqlite://PATH` (relative or absolute, e.g.
    /// `sqlite://act.db`, `sqlite:///var/lib/app/act.db`). Query parameters:
    /// `readers=N`, `busy_timeout_ms=N`, `watch_ms=N` (0 disables),
    /// `queue_sync=normal|full` (see [`SqliteOptions::fsync_queue_writes`]).
    pub async fn open_url(url: &str) -> act::Result<Self> {
        let (path, options) = parse_url(url)?;
        SqliteStore::open_with(path, options).await
    }

    /// Opens with explicit options.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> act::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name: Arc<str> = Arc::from(format!("sqlite://{}", path.display()));
        let (n, p) = (name.clone(), path.clone());
        let opts = options.clone();
        // Opening touches the disk: off the runtime.
        let (writer, readers, watcher) =
            tokio::task::spawn_blocking(move || connect(&p, &n, &opts))
                .await
                .map_err(|e| Error::Store {
                    store: name.to_string(),
                    source: Box::new(e),
                })??;
        let writer = Lane::start("writer", name.clone(), vec![writer])
            .map_err(|e| thread_error(&name, e))?;
        let readers =
            Lane::start("reader", name.clone(), readers).map_err(|e| thread_error(&name, e))?;
        let wake = Arc::new(watch::Sender::new(0));
        let watcher = match (watcher, options.watch_every) {
            (Some(conn), Some(every)) => {
                Some(watch_commits(conn, every, wake.clone()).map_err(|e| thread_error(&name, e))?)
            }
            _ => None,
        };
        Ok(SqliteStore {
            name,
            path,
            writer,
            queue_sync: if options.fsync_queue_writes {
                Sync::Full
            } else {
                Sync::Normal
            },
            readers,
            clock: options.clock,
            wake,
            _watcher: watcher,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn now(&self) -> i64 {
        self.clock.now().timestamp_micros()
    }

    fn notify(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn thread_error(name: &str, e: std::io::Error) -> Error {
    Error::Store {
        store: name.to_string(),
        source: Box::new(e),
    }
}

type Connections = (Connection, Vec<Connection>, Option<Connection>);

/// Opens the connections, retrying with backoff (up to 30 s) while other
/// processes hold locks that opening needs (switching a new file to WAL needs
/// it to itself for a moment, and SQLite does not wait for that).
fn connect(path: &Path, name: &str, opts: &SqliteOptions) -> act::Result<Connections> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(2);
    loop {
        match try_connect(path, name, opts) {
            Err(Error::Unavailable { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn try_connect(path: &Path, name: &str, opts: &SqliteOptions) -> act::Result<Connections> {
    let fail = |e: rusqlite::Error| error::map(name, e);
    let open = || -> act::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::CannotOpen) => Error::Store {
                    store: name.to_string(),
                    source: format!("cannot open the database file: {e}").into(),
                },
                _ => fail(e),
            })?;
        conn.busy_timeout(opts.busy_timeout).map_err(fail)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    };
    let mut writer = open()?;
    // Read-only checks first: a foreign, corrupt or non-database file is
    // refused before anything (even the journal mode) is written to it.
    {
        // One read transaction: both reads see the same snapshot, even while
        // another process creates the schema.
        let tx = writer.transaction().map_err(fail)?;
        schema::is_ours(&tx, name).map_err(|f| f.into_act(name))?;
        tx.finish().map_err(fail)?;
    }
    let mode: String = writer
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Schema {
            store: name.to_string(),
            message: format!("cannot switch the journal to WAL (it is `{mode}`); is the file on a network share?"),
        });
    }
    writer
        .pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    schema::migrate(&mut writer, name).map_err(|f| f.into_act(name))?;
    let mut readers = Vec::new();
    for _ in 0..opts.readers.max(1) {
        let r = open()?;
        r.pragma_update(None, "query_only", true).map_err(fail)?;
        readers.push(r);
    }
    let watcher = match opts.watch_every {
        Some(_) => Some(open()?),
        None => None,
    };
    Ok((writer, readers, watcher))
}

/// Polls `PRAGMA data_version` (it changes when *another* connection commits)
/// and signals the wake channel. Stops when the returned sender is dropped.
fn watch_commits(
    conn: Connection,
    every: Duration,
    wake: Arc<watch::Sender<u64>>,
) -> std::io::Result<std::sync::mpsc::Sender<()>> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("act-sqlite-watcher".into())
        .spawn(move || {
            let version = |c: &Connection| {
                c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                    .ok()
            };
            let mut last = version(&conn);
            // Ends when the store drops its end of the channel.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                let now = version(&conn);
                if now.is_some() && now != last {
                    last = now;
                    wake.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        })?;
    Ok(stop)
}

/// Splits `sqlite://PATH?options` into a path and options.
pub fn parse_url(url: &str) -> act::Result<(PathBuf, SqliteOptions)> {
    let rest = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| Error::UnknownStore {
            url: act::redact_url(url),
            supported: "sqlite://PATH".into(),
        })?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(Error::InvalidInput(format!(
            "`{url}` names no file: use sqlite://PATH, e.g. sqlite://act.db"
        )));
    }
    let mut options = SqliteOptions::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                Error::InvalidInput(format!(
                    "`{key}` in `{url}` must be a whole number, got `{value}`"
                ))
            })
        };
        match key {
            "readers" => options.readers = number()?.clamp(1, 64) as usize,
            "busy_timeout_ms" => options.busy_timeout = Duration::from_millis(number()?),
            "queue_sync" => {
                options.fsync_queue_writes = match value {
                    "full" => true,
                    "normal" => false,
                    _ => {
                        return Err(Error::InvalidInput(format!(
                            "`queue_sync` in `{url}` must be `full` or `normal`, got `{value}`"
                        )))
                    }
                }
            }
            "watch_ms" => {
                options.watch_every = match number()? {
                    0 => None,
                    ms => Some(Duration::from_millis(ms)),
                }
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown option `{key}` in `{url}`: known options are readers, busy_timeout_ms, watch_ms, queue_sync"
                )))
            }
        }
    }
    Ok((PathBuf::from(path), options))
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, append: Append) -> act::Result<Vec<Arc<Event>>> {
        let encoded = events::Encoded::new(append)?;
        let now = self.now();
        let out = self
            .writer
            .write(Sync::Full, move |tx| events::append(tx, &encoded, now))
            .await?;
        if !out.is_empty() {
            self.notify();
        }
        Ok(out)
    }

    async fn query(&self, query: &Query) -> act::Result<Vec<Arc<Event>>> {
        let q = query.clone();
        self.readers.read(move |tx| events::query(tx, &q)).await
    }

    async fn head(&self) -> act::Result<i64> {
        self.readers.read(events::head).await
    }

    fn wake(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn checkpoint(&self) -> act::Result<i64> {
        self.readers.read(queues::checkpoint).await
    }

    async fn enqueue(&self, work: &[Work], from: i64, to: i64) -> act::Result<i64> {
        if to < from {
            return Err(Error::InvalidInput(format!(
                "checkpoint cannot move backwards (from {from} to {to})"
            )));
        }
        let work = work.to_vec();
        let (cp, any) = self
            .writer
            .write(self.queue_sync, move |tx| {
                queues::enqueue(tx, &work, from, to)
            })
            .await?;
        if any {
            self.notify();
        }
        Ok(cp)
    }

    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        let c = claim.clone();
        let now = self.now();
        self.writer
            .write(self.queue_sync, move |tx| queues::claim(tx, &c, now))
            .await
    }

    async fn settle(&self, settlements: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        if let Some(s) = settlements.iter().find(|s| s.to < s.from) {
            return Err(Error::InvalidInput(format!(
                "settlement of `{}` moves its position backwards ({} to {})",
                s.lease.stream, s.from, s.to
            )));
        }
        let s = settlements.to_vec();
        let now = self.now();
        let (results, _more) = self
            .writer
            .write(self.queue_sync, move |tx| queues::settle(tx, &s, now))
            .await?;
        // Any applied settlement frees a lease: wake brokers waiting for it.
        if results.iter().any(Result::is_ok) {
            self.notify();
        }
        Ok(results)
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        let l = leases.to_vec();
        let now = self.now();
        self.writer
            .write(self.queue_sync, move |tx| queues::renew(tx, &l, lease, now))
            .await
    }

    async fn release(&self, leases: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        let l = leases.to_vec();
        let out = self
            .writer
            .write(self.queue_sync, move |tx| queues::release(tx, &l))
            .await?;
        if out.iter().any(Result::is_ok) {
            self.notify();
        }
        Ok(out)
    }

    async fn unblock(&self, streams: &[String]) -> act::Result<Vec<String>> {
        let s = streams.to_vec();
        let out = self
            .writer
            .write(Sync::Full, move |tx| queues::unblock(tx, &s))
            .await?;
        if !out.is_empty() {
            self.notify();
        }
        Ok(out)
    }

    async fn reset(&self, stream: &str, position: i64) -> act::Result<QueueState> {
        let s = stream.to_string();
        let out = self
            .writer
            .write(Sync::Full, move |tx| queues::reset(tx, &s, position))
            .await?;
        self.notify();
        Ok(out)
    }

    async fn queues(&self, filter: &QueueFilter) -> act::Result<Vec<QueueState>> {
        let f = filter.clone();
        self.readers.read(move |tx| queues::queues(tx, &f)).await
    }

    async fn next_due(&self) -> act::Result<Option<Duration>> {
        let now = self.now();
        self.readers.read(move |tx| queues::next_due(tx, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_and_options() {
        let (p, o) = parse_url("sqlite://act.db").unwrap();
        assert_eq!(p, PathBuf::from("act.db"));
        assert_eq!(o.readers, 2);
        let (p, o) =
            parse_url("sqlite:///var/lib/x.db?readers=4&watch_ms=0&busy_timeout_ms=100").unwrap();
        assert_eq!(p, PathBuf::from("/var/lib/x.db"));
        assert_eq!(
            (o.readers, o.watch_every, o.busy_timeout),
            (4, None, Duration::from_millis(100))
        );
        assert!(!o.fsync_queue_writes);
        assert!(
            parse_url("sqlite://x.db?queue_sync=full")
                .unwrap()
                .1
                .fsync_queue_writes
        );
        assert!(parse_url("sqlite://x.db?queue_sync=sometimes")
            .unwrap_err()
            .to_string()
            .contains("`full` or `normal`"));
        assert!(parse_url("sqlite://")
            .unwrap_err()
            .to_string()
            .contains("names no file"));
        assert!(parse_url("sqlite://x.db?readers=lots")
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        assert!(parse_url("sqlite://x.db?nope=1")
            .unwrap_err()
            .to_string()
            .contains("unknown option `nope`"));
    }
}
