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
//!   panic or a silent re-create. Migration 2 (port v2: subscriptions, items
//!   per reaction, replays) carries a version 1 file forward: its pending
//!   work becomes items that name no reaction, its one checkpoint is
//!   [`QueueStore::legacy_checkpoint`].
//! - **Open modes.** [`OpenMode::Create`] (brokers, applications) creates and
//!   migrates; [`OpenMode::Existing`] never creates ([`Error::Missing`]);
//!   [`OpenMode::ReadOnly`] (operator views) never creates, migrates or
//!   writes, also in a read-only directory, and refuses writes.
//! - **Costs.** Claim walks the `queues_due` index in claim order and stops
//!   once it has leased enough queues; a batch is a range of the `items`
//!   primary key; an ack deletes one. An enqueue is one prepared insert per
//!   item and one write per touched queue, in one transaction.
//! - **Errors** are classified by SQLite's result code: locks, I/O errors, a
//!   full disk and a file that became read-only are transient
//!   ([`Error::Unavailable`]); see the `error` module for the table.
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
mod open;
mod project;
mod queues;
mod schema;
mod subscriptions;
#[cfg(test)]
mod upgrade_tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use act::clock::{Clock, SystemClock};
use act::{
    Append, Batch, Claim, Correlation, Error, Event, EventStore, LeaseRef, OpenMode, Query,
    QueueFilter, QueueState, QueueStore, Rejection, Replay, Retired, Settlement, Subscription,
    SubscriptionState, Wake,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use lanes::{Lane, Sync};
pub use open::{parse_url, KNOWN_OPTIONS};
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
    /// Whether queue bookkeeping (subscriptions, correlation, claims, acks,
    /// retries, blocks, lease renewals and releases) is fsynced like appends.
    /// Appends, `unblock`, `reset` and `retire` always are. When false (the
    /// default) those writes commit with `synchronous=NORMAL`: a power loss
    /// may undo the last of them, which only redelivers events (see
    /// docs/sqlite.md).
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
/// the last handle closes the connections (in the background: [`close`]
/// waits for it).
///
/// [`close`]: SqliteStore::close
pub struct SqliteStore {
    name: Arc<str>,
    path: PathBuf,
    /// `None` when opened [`OpenMode::ReadOnly`].
    writer: Option<Lane>,
    /// How queue bookkeeping reaches the disk.
    queue_sync: Sync,
    readers: Lane,
    clock: Arc<dyn Clock>,
    wake: Arc<watch::Sender<Wake>>,
    // Dropping it stops the watcher thread.
    watcher: Option<open::Watcher>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("store", &self.name)
            .field("read_only", &self.writer.is_none())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` with default
    /// options, and brings its schema up to date ([`OpenMode::Create`]).
    pub async fn open(path: impl AsRef<Path>) -> act::Result<Self> {
        SqliteStore::open_with(path, SqliteOptions::default()).await
    }

    /// Opens a store from a URL: `sqlite://PATH` (relative or absolute, e.g.
    /// `sqlite://act.db`, `sqlite:///var/lib/app/act.db`; percent-encoded:
    /// `sqlite:///srv/my%20app/act.db`), creating it when missing. Query
    /// parameters: `readers=N`, `busy_timeout_ms=N`, `watch_ms=N` (0
    /// disables), `queue_sync=normal|full` (see
    /// [`SqliteOptions::fsync_queue_writes`]); see [`parse_url`].
    pub async fn open_url(url: &str) -> act::Result<Self> {
        SqliteStore::open_url_mode(url, OpenMode::Create).await
    }

    /// Opens a store from a URL (see [`SqliteStore::open_url`]) in `mode`.
    ///
    /// ```no_run
    /// # async fn demo() -> act::Result<()> {
    /// // `act status`: never creates, migrates or writes the file.
    /// let store = act_sqlite::SqliteStore::open_url_mode("sqlite://act.db", act::OpenMode::ReadOnly).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open_url_mode(url: &str, mode: OpenMode) -> act::Result<Self> {
        let (path, options) = parse_url(url)?;
        SqliteStore::open_with_mode(path, options, mode).await
    }

    /// Opens with explicit options ([`OpenMode::Create`]).
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> act::Result<Self> {
        SqliteStore::open_with_mode(path, options, OpenMode::Create).await
    }

    /// Opens with explicit options in `mode`:
    ///
    /// - [`OpenMode::Create`]: creates the file when missing, switches it to
    ///   WAL and migrates it.
    /// - [`OpenMode::Existing`]: a missing file (or an empty database) is
    ///   [`Error::Missing`] and is never created; an existing store is
    ///   migrated as usual.
    /// - [`OpenMode::ReadOnly`]: a missing file is [`Error::Missing`]; the
    ///   file is opened with `SQLITE_OPEN_READ_ONLY` (no journal switch, no
    ///   migration, no write; works on a file in a read-only directory); a
    ///   schema older than this build is [`Error::Schema`] asking to open it
    ///   once for writing, a newer one is refused as in every mode. Every
    ///   write method of the store then fails with [`Error::InvalidInput`].
    ///
    /// Opening touches the disk: it runs on a blocking thread, and waits (up
    /// to 30 s) while other processes hold locks that opening needs.
    pub async fn open_with_mode(
        path: impl AsRef<Path>,
        options: SqliteOptions,
        mode: OpenMode,
    ) -> act::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name: Arc<str> = Arc::from(format!("sqlite://{}", path.display()));
        let (n, p) = (name.clone(), path.clone());
        let opts = options.clone();
        let opened = tokio::task::spawn_blocking(move || open::connect(&p, &n, &opts, mode))
            .await
            .map_err(|e| Error::Store {
                store: name.to_string(),
                source: Box::new(e),
            })??;
        let writer = match opened.writer {
            Some(conn) => Some(
                Lane::start("writer", name.clone(), vec![conn])
                    .map_err(|e| thread_error(&name, e))?,
            ),
            None => None,
        };
        let readers = Lane::start("reader", name.clone(), opened.readers)
            .map_err(|e| thread_error(&name, e))?;
        let wake = Arc::new(watch::Sender::new(Wake::default()));
        let watcher = match (opened.watcher, options.watch_every) {
            (Some(conn), Some(every)) => Some(
                open::Watcher::start(conn, every, wake.clone())
                    .map_err(|e| thread_error(&name, e))?,
            ),
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
            watcher,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when opened [`OpenMode::ReadOnly`].
    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    /// Closes the store and waits until every connection is closed (the
    /// last connection of all processes checkpoints the WAL into the file
    /// and removes it). Calls already queued finish first. Dropping the
    /// store does the same without waiting.
    pub async fn close(self) {
        let mut threads = self.readers.close();
        if let Some(w) = self.writer {
            threads.extend(w.close());
        }
        if let Some(w) = self.watcher {
            threads.push(w.close());
        }
        // Joining blocks: off the runtime.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }

    fn now(&self) -> i64 {
        self.clock.now().timestamp_micros()
    }

    fn notify(&self, change: fn(&mut Wake)) {
        self.wake.send_modify(change);
    }

    /// The writer lane, or the error of a store opened read-only.
    fn writer(&self, what: &str) -> act::Result<&Lane> {
        self.writer.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "store `{}` was opened read-only: it cannot {what} (open it with OpenMode::Create or OpenMode::Existing to write)",
                self.name
            ))
        })
    }
}

fn thread_error(name: &str, e: std::io::Error) -> Error {
    Error::Store {
        store: name.to_string(),
        source: Box::new(e),
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + std::marker::Sync)> {
        Some(self)
    }

    async fn append(&self, append: Append) -> act::Result<Vec<Arc<Event>>> {
        act::limits::check_append(&append)?;
        let writer = self.writer("append")?;
        let encoded = events::Encoded::new(append)?;
        let now = self.now();
        let out = writer
            .write(Sync::Full, move |tx| events::append(tx, &encoded, now))
            .await?;
        if !out.is_empty() {
            self.notify(Wake::new_events);
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

    fn wake(&self) -> watch::Receiver<Wake> {
        self.wake.subscribe()
    }
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn legacy_checkpoint(&self) -> act::Result<i64> {
        self.readers.read(subscriptions::legacy_checkpoint).await
    }

    async fn subscribe(&self, subs: &[Subscription]) -> act::Result<Vec<SubscriptionState>> {
        for s in subs {
            act::limits::check_name("the reaction name", &s.name)?;
        }
        let writer = self.writer("subscribe")?;
        let s = subs.to_vec();
        let now = self.now();
        writer
            .write(self.queue_sync, move |tx| {
                subscriptions::subscribe(tx, &s, now)
            })
            .await
    }

    async fn subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        self.readers.read(subscriptions::list).await
    }

    async fn retire(&self, names: &[String]) -> act::Result<Vec<Retired>> {
        let writer = self.writer("retire reactions")?;
        let n = names.to_vec();
        let now = self.now();
        let out = writer
            .write(Sync::Full, move |tx| subscriptions::retire(tx, &n, now))
            .await?;
        self.notify(Wake::new_events);
        Ok(out)
    }

    async fn enqueue(&self, step: &Correlation) -> act::Result<act::Enqueued> {
        if step.to < step.from {
            return Err(Error::InvalidInput(format!(
                "a correlation step cannot move backwards (from {} to {})",
                step.from, step.to
            )));
        }
        for w in &step.work {
            act::limits::check_name("the queue name", &w.stream)?;
        }
        let writer = self.writer("enqueue")?;
        let s = step.clone();
        let (after, added) = writer
            .write(self.queue_sync, move |tx| subscriptions::enqueue(tx, &s))
            .await?;
        if added || step.replay.is_some() {
            self.notify(Wake::new_work);
        }
        Ok(after)
    }

    async fn replays(&self) -> act::Result<Vec<Replay>> {
        self.readers.read(subscriptions::replays).await
    }

    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        let writer = self.writer("claim")?;
        let c = claim.clone();
        let now = self.now();
        writer
            .write(self.queue_sync, move |tx| queues::claim(tx, &c, now))
            .await
    }

    async fn settle(&self, settlements: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        let writer = self.writer("settle")?;
        let s = settlements.to_vec();
        let now = self.now();
        let results = writer
            .write(self.queue_sync, move |tx| queues::settle(tx, &s, now))
            .await?;
        // Any applied settlement frees a lease: wake brokers waiting for it.
        if results.iter().any(Result::is_ok) {
            self.notify(Wake::new_work);
        }
        Ok(results)
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        let writer = self.writer("renew leases")?;
        let l = leases.to_vec();
        let now = self.now();
        writer
            .write(self.queue_sync, move |tx| queues::renew(tx, &l, lease, now))
            .await
    }

    async fn release(&self, leases: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        let writer = self.writer("release leases")?;
        let l = leases.to_vec();
        let out = writer
            .write(self.queue_sync, move |tx| queues::release(tx, &l))
            .await?;
        if out.iter().any(Result::is_ok) {
            self.notify(Wake::new_work);
        }
        Ok(out)
    }

    async fn unblock(&self, streams: &[String]) -> act::Result<Vec<String>> {
        let writer = self.writer("unblock queues")?;
        let s = streams.to_vec();
        let out = writer
            .write(Sync::Full, move |tx| queues::unblock(tx, &s))
            .await?;
        if !out.is_empty() {
            self.notify(Wake::new_work);
        }
        Ok(out)
    }

    async fn reset(&self, stream: &str, position: i64) -> act::Result<QueueState> {
        let writer = self.writer("reset queues")?;
        let s = stream.to_string();
        let out = writer
            .write(Sync::Full, move |tx| queues::reset(tx, &s, position))
            .await?;
        self.notify(Wake::new_events);
        Ok(out)
    }

    async fn queues(&self, filter: &QueueFilter) -> act::Result<Vec<QueueState>> {
        let f = filter.clone();
        self.readers.read(move |tx| queues::queues(tx, &f)).await
    }

    async fn pending_by_reaction(&self) -> act::Result<Vec<(String, u64)>> {
        self.readers.read(queues::pending_by_reaction).await
    }

    async fn next_due(&self, reactions: &[String]) -> act::Result<Option<Duration>> {
        let now = self.now();
        let r = reactions.to_vec();
        self.readers
            .read(move |tx| queues::next_due(tx, &r, now))
            .await
    }
}
