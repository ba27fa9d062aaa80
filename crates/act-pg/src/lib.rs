//! # act-pg
//!
//! The PostgreSQL backend of act, for many brokers on many machines.
//!
//! - **Everything in one schema** of your choice (`?schema=NAME`, default
//!   `act`), so several apps and parallel tests share one server. Numbered
//!   migrations, recorded, applied under an advisory lock.
//! - **Appends** are one call of the `act_append` function, checked first
//!   against [`act::limits`]: one writer per stream at a time (a
//!   transaction-level advisory lock), so an append that expects any version
//!   never fails and one that expects a version it does not find is
//!   [`act::Error::Concurrency`] naming the actual one; idempotency keys in
//!   their own table.
//! - **Visibility** (contract promise 4) without a global lock: ids are
//!   `(transaction id << 16) + n`, and readers that follow ids stop below the
//!   oldest running transaction, so no event can appear behind a reader.
//!   Appends from many clients run in parallel (see `docs/postgres.md`).
//! - **Queues** (port version 2): subscriptions with their own checkpoints,
//!   pending items per (queue, event, reaction), replays of reset queues.
//!   Every rule that takes more than one statement is one PL/pgSQL function
//!   (enqueue, claim, settle, renew, release, reset, retire, subscribe), so
//!   every port call is one round trip. Claim walks the `queues_due` index
//!   in claim order with `FOR UPDATE SKIP LOCKED`, leases on the database
//!   clock, and stops as soon as it has leased enough queues. Names are
//!   `COLLATE "C"`: listings, pages and tie-breaks are byte order whatever
//!   the database's default collation.
//! - **Faults**: a connection whose error may have left it unusable (closed,
//!   server shutting down, read-only session, failed transaction) is dropped
//!   instead of going back to the pool; errors are classified by cause
//!   (SQLSTATE, I/O), never by message text.
//! - **Wake-up** with `LISTEN/NOTIFY`, sent after commits (never inside them),
//!   with reconnection and polling as the fallback.
//!
//! ```no_run
//! # async fn demo() -> act::Result<()> {
//! let store = act_pg::PgStore::open("postgres://postgres@127.0.0.1:5432/test?schema=myapp").await?;
//! # Ok(()) }
//! ```
//!
//!
//! ## URL options
//!
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTION=VALUE&…]` (or
//! `postgresql://`), parsed by [`parse_url`]. User, password, database and
//! values are percent-decoded (`@` is `%40`, `/` is `%2F`, `%` is `%25`).
//! An unknown option or a bad value is [`act::Error::InvalidInput`] naming
//! it; the password never appears in an error.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `schema` | `act` | the schema holding act's tables |
//! | `pool_size` | `16` | connections in the pool (1–1000) |
//! | `listen` | `true` | wake brokers on other processes' commits (`LISTEN/NOTIFY`) |
//! | `sslmode` | `prefer` | `disable`, `prefer` (TLS if the server offers it), `require` (TLS, server not verified), `verify-ca` (trusted chain), `verify-full` (trusted chain and host name) |
//! | `sslrootcert` | system trust store | PEM file of the CA(s) to trust, replacing the system's store (as libpq); `system` for the system's store. With `prefer`/`require`, verifies the chain as `verify-ca` |
//! | `sslcert`, `sslkey` | none | PEM client certificate and its key, sent when the server asks |
//! | `connect_timeout` | `10` | seconds to open one connection (TCP, TLS, authentication) |
//! | `keepalives` | `1` | TCP keepalives on (`1`) or off (`0`) |
//! | `keepalives_idle` | `60` | idle seconds before the first keepalive probe |
//! | `statement_timeout` | `30000` | milliseconds any of act's statements may run; `0` for none (migrations lift it) |
//! | `idle_in_transaction_session_timeout` | `60000` | milliseconds a session may idle inside a transaction; `0` for none |
//! | `application_name` | `act` | the name in `pg_stat_activity` ([`PgOptions::with_application_name`]) |
//! | `options` | none | server options for act's sessions (`-c name=value …`), before act's own |
//!
//! TLS (feature `tls`, on by default) uses rustls: see `docs/postgres.md`,
//! "TLS and connection options".

mod conn;
mod error;
mod events;
mod notify;
mod options;
mod project;
mod queues;
mod schema;
mod subscriptions;
#[cfg(feature = "tls")]
mod tls;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::{Error, OpenMode, Wake};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use conn::Conn;

pub use options::{parse_url, PgOptions, SslMode, TlsOptions, KNOWN_OPTIONS};
pub use schema::SCHEMA_VERSION;

/// The TLS connector of every connection (the pool's and the LISTEN one).
#[cfg(feature = "tls")]
pub(crate) type Connector = tls::Connector;
/// Without the `tls` feature: plaintext only.
#[cfg(not(feature = "tls"))]
pub(crate) type Connector = tokio_postgres::NoTls;

/// Test-only helpers (feature `test-hooks`): never use in an application.
#[cfg(feature = "test-hooks")]
pub mod testing {
    pub use crate::schema::{store_sql_at, v1_store_sql};
}

/// Both ports on PostgreSQL. Share it behind an `Arc`; dropping the last
/// handle stops its listener and closes its connections.
pub struct PgStore {
    pub(crate) pool: Pool,
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) offset: Arc<AtomicI64>,
    pub(crate) naive: bool,
    pub(crate) delay_ms: i32,
    read_only: bool,
    wake: Arc<watch::Sender<Wake>>,
    poke: Arc<Notify>,
    /// Set with a poke when new events were committed: the NOTIFY says so,
    /// and brokers elsewhere read the log only then.
    poke_events: Arc<AtomicBool>,
    /// Pokes for news other processes need only eventually (freed leases).
    soft_poke: Arc<Notify>,
    recheck: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    listener: Option<Listener>,
}

/// The cross-process listener, started on the first subscription.
struct Listener {
    config: tokio_postgres::Config,
    tls: Connector,
    channel: String,
    task: std::sync::OnceLock<JoinHandle<()>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("store", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(t) = self.listener.as_ref().and_then(|l| l.task.get()) {
            t.abort();
        }
    }
}

impl PgStore {
    /// Opens a store from a URL (`postgres://user:pass@host:port/db?schema=NAME&pool_size=N`),
    /// creating or upgrading its schema ([`OpenMode::Create`]).
    ///
    /// ```no_run
    /// # async fn demo() -> act::Result<()> {
    /// let store = act_pg::PgStore::open("postgres://postgres@127.0.0.1/app?schema=shop").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> act::Result<Self> {
        PgStore::open_mode(url, OpenMode::Create).await
    }

    /// Opens a store from a URL as `mode` says: [`OpenMode::Create`] creates
    /// or upgrades the schema; [`OpenMode::Existing`] upgrades it and
    /// refuses a missing one ([`Error::Missing`]); [`OpenMode::ReadOnly`]
    /// runs no DDL and writes nothing (it works against a read-only
    /// database), refuses a missing schema ([`Error::Missing`]) and one older
    /// or newer than this build ([`Error::Schema`]), opens sessions with
    /// `default_transaction_read_only`, refuses writes itself
    /// ([`Error::InvalidInput`]), and starts no `NOTIFY` sender. One round
    /// trip or two to check the schema; the pool connects lazily after that.
    pub async fn open_mode(url: &str, mode: OpenMode) -> act::Result<Self> {
        let (config, mut options) = parse_url(url)?;
        options.mode = mode;
        PgStore::open_with(config, options, &act::redact_url(url)).await
    }

    /// Opens with an explicit driver configuration and options; `label` names
    /// the store in errors (never put a password in it).
    pub async fn open_with(
        mut config: tokio_postgres::Config,
        options: PgOptions,
        label: &str,
    ) -> act::Result<Self> {
        schema::validate(&options.schema)?;
        let name = format!("{label} (schema {})", options.schema);
        let read_only = options.mode == OpenMode::ReadOnly;
        options.apply(&mut config);
        let tls = connector(&options).await?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.pool_timeout))
            .create_timeout(Some(options.pool_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot build the connection pool: {e}")))?;
        let mut client = Conn::new(pool.get().await.map_err(|e| error::pool(&name, e))?);
        let opened = schema::open(client.object_mut(), &options.schema, &name, options.mode).await;
        if matches!(opened, Err(Error::Unavailable { .. })) {
            client.discard();
        }
        opened?;
        drop(client);
        let wake = Arc::new(watch::Sender::new(Wake::default()));
        let poke = Arc::new(Notify::new());
        let poke_events = Arc::new(AtomicBool::new(false));
        let soft_poke = Arc::new(Notify::new());
        let channel = channel(&options.schema);
        let recheck = Arc::new(Notify::new());
        let mut tasks = vec![notify::rechecker(recheck.clone(), wake.clone())];
        if !read_only {
            // Only writers tell other processes about their commits.
            tasks.push(notify::notifier(
                pool.clone(),
                channel.clone(),
                poke.clone(),
                Some(poke_events.clone()),
                notify::PACE,
            ));
            tasks.push(notify::notifier(
                pool.clone(),
                channel.clone(),
                soft_poke.clone(),
                None,
                notify::SOFT_PACE,
            ));
        }
        // The LISTEN connection is opened on the first `wake()`: one-shot
        // commands (status, reset…) never need it.
        let listener = options.listen.then(|| Listener {
            config,
            tls,
            channel,
            task: std::sync::OnceLock::new(),
        });
        #[cfg(feature = "test-hooks")]
        let (naive, delay_ms) = (options.naive_ids, options.commit_delay_ms);
        #[cfg(not(feature = "test-hooks"))]
        let (naive, delay_ms) = (false, 0);
        Ok(PgStore {
            pool,
            schema: options.schema,
            name,
            offset: options.clock_offset,
            naive,
            delay_ms,
            read_only,
            wake,
            poke,
            poke_events,
            soft_poke,
            recheck,
            tasks,
            listener,
        })
    }

    /// The schema holding the store.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the store's schema with everything in it (`DROP SCHEMA …
    /// CASCADE`): for benchmarks and tests that made a throwaway store.
    /// Irreversible.
    pub async fn drop_schema(&self) -> act::Result<()> {
        self.writable()?;
        let client = self.conn().await?;
        client
            .batch(&format!(
                // One implicit transaction, without the session's
                // statement_timeout: a big schema takes a while to drop.
                "SET LOCAL statement_timeout = 0; DROP SCHEMA IF EXISTS {} CASCADE",
                self.schema
            ))
            .await
            .map_err(|e| self.err(e))
    }

    /// A pooled connection (dropped instead of returned after an error that
    /// may have spoiled it).
    pub(crate) async fn conn(&self) -> act::Result<Conn> {
        self.pool
            .get()
            .await
            .map(Conn::new)
            .map_err(|e| error::pool(&self.name, e))
    }

    /// Runs one statement on a pooled connection, again (up to 5 times)
    /// when the server aborted it for a deadlock or a serialization failure.
    /// The connection goes back to the pool before the rows are decoded.
    pub(crate) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> act::Result<Vec<Row>> {
        self.try_rows(sql, params).await.map_err(|f| self.fail(f))
    }

    /// [`PgStore::rows`] with the driver's error, for callers that map act's
    /// own SQLSTATEs first. A pool failure is already mapped.
    pub(crate) async fn try_rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Failure> {
        let mut attempt = 0;
        loop {
            let client = self.conn().await.map_err(Failure::Mapped)?;
            match client.query(sql, params).await {
                Err(e) if error::is_retryable(&e) && attempt < 5 => {
                    drop(client);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..10 * attempt))).await;
                }
                other => return other.map_err(Failure::Driver),
            }
        }
    }

    /// [`PgStore::try_rows`] after folding correlation's news into the
    /// queue rows no one holds (`act_fold_news`, in a transaction of its own,
    /// pipelined: no extra round trip), for the calls that read queue rows
    /// as claims see them: claim, next-due, listings. A store opened
    /// read-only writes nothing and skips the fold. A failed fold is logged
    /// and the rows returned: a later fold does the same work, and the
    /// statement's own writes (a claim's leases) must reach the caller.
    ///
    /// With `limit`, the fold takes at most that many queues, the news of
    /// the highest priority and the oldest event first, among those no one
    /// holds (a claim folds about what it may lease). Without it, every
    /// queue with news that no one holds (listings, next-due). A fold holds
    /// its queues' rows until it commits, and a claim skips held rows: when
    /// every claim folded everything, concurrent claims found the queues
    /// another claim was folding neither folded nor free, and came back
    /// with less than there was.
    pub(crate) async fn try_rows_folded(
        &self,
        limit: Option<usize>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Failure> {
        if self.read_only {
            return self.try_rows(sql, params).await;
        }
        let fold = self.fold_sql(limit);
        let mut attempt = 0;
        loop {
            let client = self.conn().await.map_err(Failure::Mapped)?;
            match client.query_after(&fold, sql, params).await {
                Err(e) if error::is_retryable(&e) && attempt < 5 => {
                    drop(client);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..10 * attempt))).await;
                }
                Err(e) => return Err(Failure::Driver(e)),
                Ok((rows, folded)) => {
                    if let Some(e) = folded {
                        tracing::warn!(store = %self.name, error = %e, "folding correlation's news into the queue rows failed; a later call folds them");
                    }
                    return Ok(rows);
                }
            }
        }
    }

    /// The fold [`PgStore::try_rows_folded`] runs before its statement.
    pub(crate) fn fold_sql(&self, limit: Option<usize>) -> String {
        match limit {
            None => format!("SELECT {}.act_fold_news()", self.schema),
            Some(n) => format!(
                "SELECT {s}.act_fold(coalesce(array_agg(l.stream), '{{}}')) FROM (
                    SELECT x.stream FROM {s}.queues x
                    JOIN (SELECT n.stream, max(n.priority) AS p, min(n.first) AS f
                          FROM {s}.news n GROUP BY n.stream) n ON n.stream = x.stream
                    ORDER BY n.p DESC, n.f, x.stream
                    LIMIT {n}
                    FOR UPDATE OF x SKIP LOCKED) l",
                s = self.schema
            ),
        }
    }

    /// [`PgStore::try_rows_folded`] with the error mapped.
    pub(crate) async fn rows_folded(
        &self,
        limit: Option<usize>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> act::Result<Vec<Row>> {
        self.try_rows_folded(limit, sql, params)
            .await
            .map_err(|f| self.fail(f))
    }

    /// Runs an event query.
    async fn read(&self, sql: &events::Sql) -> act::Result<Vec<Row>> {
        self.rows(&sql.text, &sql.params()).await
    }

    /// Refuses a write on a store opened read-only.
    pub(crate) fn writable(&self) -> act::Result<()> {
        if self.read_only {
            return Err(Error::InvalidInput(format!(
                "store {} was opened read-only (OpenMode::ReadOnly): it writes nothing; open it with OpenMode::Existing to change it",
                self.name
            )));
        }
        Ok(())
    }

    pub(crate) fn offset_us(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// New events were committed: wakes brokers here at once and, through
    /// the notifier, elsewhere.
    pub(crate) fn notify_events(&self) {
        self.wake.send_modify(Wake::new_events);
        self.poke_events.store(true, Ordering::SeqCst);
        self.poke.notify_one();
    }

    /// Queues changed (work may be claimable, the log did not change):
    /// wakes brokers here at once and, through the notifier, elsewhere.
    pub(crate) fn notify_work(&self) {
        self.wake.send_modify(Wake::new_work);
        self.poke.notify_one();
    }

    /// Wakes brokers here at once and elsewhere within [`notify::SOFT_PACE`]:
    /// for news that only a broker waiting on another process's lease needs
    /// (a settle freed leases). Brokers here reclaim what they settled; waking
    /// every other process after every settle made each of them query for
    /// work that was not theirs, and more brokers delivered less.
    pub(crate) fn notify_soon(&self) {
        self.wake.send_modify(Wake::new_work);
        self.soft_poke.notify_one();
    }

    pub(crate) fn err(&self, e: tokio_postgres::Error) -> Error {
        error::map(&self.name, e)
    }

    /// Maps a [`Failure`] that is not one of act's own codes.
    pub(crate) fn fail(&self, f: Failure) -> Error {
        match f {
            Failure::Mapped(e) => e,
            Failure::Driver(e) => self.err(e),
        }
    }
}

/// Why a statement failed: no connection (already an [`act::Error`]), or the
/// driver's error (the caller may look at act's own SQLSTATEs first).
pub(crate) enum Failure {
    Mapped(Error),
    Driver(tokio_postgres::Error),
}

/// The store's TLS connector, built on a blocking thread (it reads the PEM
/// files `options.tls` names, and the system's trust store).
#[cfg(feature = "tls")]
async fn connector(options: &PgOptions) -> act::Result<Connector> {
    let tls = options.tls.clone();
    tokio::task::spawn_blocking(move || tls::connector(&tls))
        .await
        .map_err(|e| Error::InvalidInput(format!("TLS setup did not finish: {e}")))?
}

#[cfg(not(feature = "tls"))]
async fn connector(_options: &PgOptions) -> act::Result<Connector> {
    Ok(tokio_postgres::NoTls)
}

/// The NOTIFY channel of a schema (at most 63 bytes).
fn channel(schema: &str) -> String {
    let mut c = format!("act_{schema}");
    c.truncate(63);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_fit_in_an_identifier() {
        assert_eq!(channel("act"), "act_act");
        assert_eq!(channel(&"x".repeat(63)).len(), 63);
    }
}
