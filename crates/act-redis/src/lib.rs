//! # act-redis
//!
//! The Redis backend of act: the event log and the queue store on one Redis
//! server, for teams that already run Redis. The same application code as on
//! SQLite or in memory, the same conformance kit, and the same promises where
//! Redis can keep them — with one plain exception: **durability is Redis's
//! persistence setting**. With RDB snapshots or AOF `everysec`, a crash (or a
//! failover to a replica that had not received them) loses acknowledged
//! appends, acks and leases; only AOF `appendfsync always` on a single node
//! keeps every acknowledged write. See `docs/redis.md`.
//!
//! - **Atomic steps.** Every operation that touches more than one key or
//!   reads then writes is one Lua script (sent with `EVALSHA`, reloaded on
//!   `NOSCRIPT`): append with its version check and idempotency key,
//!   subscribe, retire, correlation (compare-and-set per reaction), claim,
//!   settle, renew, release, unblock, reset. Redis runs each script alone,
//!   so ids (from `INCRBY` inside the append) become visible in order.
//! - **The store's clock** is the Redis server's `TIME`, read inside each
//!   script: leases and retry times mean the same for every process.
//! - **Claim costs the same with 100 or 1,000,000 queues**: claimable queues
//!   sit in a sorted set in claim order (queues waiting for a reaction in
//!   one such set per reaction), leased and retrying ones in another scored
//!   by when they become claimable; no `KEYS` or `SCAN` anywhere.
//! - **Wake-ups** across processes by pub/sub, with a listener that
//!   reconnects after a server restart; brokers poll meanwhile.
//! - **Safety checks on open**: `maxmemory-policy` must be `noeviction`
//!   (other policies silently delete keys); a prefix written by a newer
//!   act-rs is refused; one of schema version 1 or 2 is upgraded in one script
//!   (never by a read-only open, see [`act::OpenMode`]).
//! - **Single node only**: Redis Cluster is not supported (the scripts
//!   derive per-queue keys at run time, which Cluster forbids). All keys of a
//!   store share the hash tag `{prefix}`, so they would land in one slot.
//!   Point the URL at the primary (an address that follows it across a
//!   failover); no Sentinel discovery is built in.
//!
//! ```no_run
//! # async fn demo() -> act::Result<()> {
//! let store = act_redis::RedisStore::open("redis://127.0.0.1:6379/0?prefix=myapp").await?;
//! # Ok(()) }
//! ```
//!
//! ## Key layout (schema version 3)
//!
//! Every key starts with `{PREFIX}:` (`P:` here). Sorted sets whose scores
//! are all 0 are read with `ZRANGEBYLEX`/`ZRANGE`: byte order.
//!
//! | Key | Type | What |
//! |---|---|---|
//! | `P:meta` | hash | `schema` (3), `created`, `upgraded` (when it came from 1 or 2) |
//! | `P:seq`, `P:events`, `P:s:STREAM`, `P:keys` | | the log, as in schema 1: head, id → JSON record, a stream's ids, idempotency keys |
//! | `P:checkpoint` | string | schema 1's correlation checkpoint, kept by the upgrade: [`QueueStore::legacy_checkpoint`] |
//! | `P:subs` | sorted set | subscription names |
//! | `P:sub:NAME` | hash | `events` (JSON), `target`, `start`, `checkpoint`, `created`, `seen`, `retired` |
//! | `P:replays` | sorted set | replays as `QUEUE \0 REACTION` (byte order of the pair) |
//! | `P:rp` | hash | replay → `position:until` |
//! | `P:rq:QUEUE` | sorted set | the queue's replays: reaction scored by position; the first is its replay horizon |
//! | `P:queues`, `P:blocked` | sorted sets | every queue's name; blocked ones |
//! | `P:q:QUEUE` | hash | `position`, `head` (work mark), `priority`, `retries`, `lapses`, `retry_at`, `blocked`, `error`, `token`, `owner`, `expires`, `floor`, `enqueued` (last sequence number), `lag` (distinct pending events), `waiting`, `replay`, `leased_to` (last event the latest claim handed out), `suspect_to` (end of a lapsed batch being walked one event at a time; absent reads as 0); `dk`, `at`, `wi` (its claim index) |
//! | `P:i:QUEUE` | sorted set | pending items: score = event id, member = `REACTION \0 SEQ` (no reaction for schema-1 items) |
//! | `P:pending` | hash | reaction → its pending items over every queue (schema 3), moved by every script that adds or removes items |
//! | `P:due` | sorted set | claimable queues, members `PPPPPPPP` (2^31−1 − priority, hex) `NNNNNNNNNNNNNNNN` (first pending event, hex) `QUEUE`: byte order is claim order |
//! | `P:waiting:REACTION` | sorted set | claimable queues waiting for a broker with that reaction (same members) |
//! | `P:delayed` | sorted set | leased or retrying queues (same members), scored by when that ends (µs) |
//! | channel `P:wake` | pub/sub | wake-ups |
//!
//! A queue with a deliverable first event (pending, not past its replay
//! horizon) that is not blocked is in exactly one of `due`,
//! `waiting:REACTION` and `delayed` (`place` in `lua/common.lua`).

#![warn(missing_docs)]

mod client;
mod conn;
mod correlation;
mod error;
mod events;
mod options;
mod plaintext;
mod queues;
mod reply;
mod schema;
mod scripts;
mod subscriptions;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use act::{
    Append, Batch, Claim, Correlation, Error, Event, EventStore, LeaseRef, OpenMode, Query,
    QueueFilter, QueueState, QueueStore, Rejection, Replay, Retired, SettledAndClaimed, Settlement,
    Subscription, SubscriptionState, Wake,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use conn::Conn;
pub use error::ConfigError;
pub use options::{
    check_client_name, check_prefix, parse_url, shown_url, RedisOptions, RedisServer, TlsOptions,
    DEFAULT_CLIENT_NAME, DEFAULT_PREFIX, KNOWN_OPTIONS,
};
pub use schema::SCHEMA_VERSION;

/// Both ports on one Redis server, under one key prefix. Dropping it closes
/// its connections and stops its wake-up listener.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    mode: OpenMode,
    wake: Arc<watch::Sender<Wake>>,
    _listener: Option<wake::Listener>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("store", &self.conn.store())
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Opens a store from a URL, creating it when the prefix is empty
    /// ([`OpenMode::Create`]):
    /// `redis://[[user]:password@]host[:port][/db][?options]`, or
    /// `rediss://…` for TLS (see [`parse_url`] for every option). Connects,
    /// names the connection (`CLIENT SETNAME`), checks `maxmemory-policy`,
    /// reads or writes the schema marker (upgrading a schema-1 prefix), and
    /// subscribes to wake-ups: a few round trips.
    ///
    /// ```no_run
    /// # async fn demo() -> act::Result<()> {
    /// let store = act_redis::RedisStore::open("redis://127.0.0.1:6379/0?prefix=myapp").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> act::Result<Self> {
        Self::open_mode(url, OpenMode::Create).await
    }

    /// Opens a store from a URL in `mode`: [`OpenMode::Existing`] fails with
    /// [`Error::Missing`] (writing nothing) when the prefix holds no store;
    /// [`OpenMode::ReadOnly`] writes nothing at all (no marker, no upgrade:
    /// a schema-1 prefix is [`Error::Schema`] asking for an upgrade), does
    /// not subscribe to wake-ups, and refuses every write through this
    /// handle.
    pub async fn open_mode(url: &str, mode: OpenMode) -> act::Result<Self> {
        let (server, options) = parse_url(url)?;
        Self::connect(url, &server, options, mode).await
    }

    /// Opens with explicit options ([`OpenMode::Create`]): `url` names the
    /// server and how to reach it (address, credentials, database,
    /// `protocol` and the `tls_*` options); the store options in its query
    /// (`prefix`, `assume_noeviction`, the timeouts, `keepalive_s`,
    /// `client_name`) are checked but `options` replaces them.
    pub async fn open_with(url: &str, options: RedisOptions) -> act::Result<Self> {
        Self::open_with_mode(url, options, OpenMode::Create).await
    }

    /// Opens with explicit options in `mode` (see [`RedisStore::open_mode`]).
    pub async fn open_with_mode(
        url: &str,
        options: RedisOptions,
        mode: OpenMode,
    ) -> act::Result<Self> {
        check_prefix(&options.prefix)?;
        check_client_name(&options.client_name)?;
        let (server, _) = parse_url(url)?;
        Self::connect(url, &server, options, mode).await
    }

    async fn connect(
        url: &str,
        server: &RedisServer,
        options: RedisOptions,
        mode: OpenMode,
    ) -> act::Result<Self> {
        let name: Arc<str> = Arc::from(shown_url(url));
        let client = client::build(&name, server, &options).await?;
        let conn = Conn::open(client.clone(), server, &options, name.clone()).await?;
        schema::check_eviction(&conn, options.assume_noeviction).await?;
        schema::open(&conn, &options.prefix, mode).await?;
        let wake = Arc::new(watch::Sender::new(Wake::default()));
        let listener = if mode == OpenMode::ReadOnly {
            None
        } else {
            Some(
                wake::listen(
                    client,
                    conn.key("wake"),
                    wake.clone(),
                    name,
                    options.connect_timeout.max(options.response_timeout),
                )
                .await?,
            )
        };
        Ok(RedisStore {
            conn,
            prefix: options.prefix,
            mode,
            wake,
            _listener: listener,
        })
    }

    /// The key prefix: every key of this store starts with `{prefix}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How this handle was opened.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    /// Deletes every key of this store (its whole prefix): for benchmarks and
    /// tests that made a throwaway store. Walks the keyspace with SCAN.
    /// Irreversible. Returns the number of keys deleted.
    pub async fn destroy(&self) -> act::Result<u64> {
        self.writable("destroy")?;
        self.conn.delete_prefix().await
    }

    fn notify(&self, change: fn(&mut Wake)) {
        self.wake.send_modify(change);
    }

    /// Refuses a write through a handle opened read-only.
    fn writable(&self, what: &str) -> act::Result<()> {
        if self.mode == OpenMode::ReadOnly {
            return Err(Error::InvalidInput(format!(
                "store `{}` was opened read-only: cannot {what}",
                self.conn.store()
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl EventStore for RedisStore {
    /// Checks the input limits, then one script, one round trip.
    async fn append(&self, append: Append) -> act::Result<Vec<Arc<Event>>> {
        act::limits::check_append(&append)?;
        self.writable("append")?;
        let (events, written) = events::append(&self.conn, append).await?;
        if written {
            self.notify(Wake::new_events);
        }
        Ok(events)
    }

    /// One round trip per page of up to 500 events.
    async fn query(&self, query: &Query) -> act::Result<Vec<Arc<Event>>> {
        events::query(&self.conn, query).await
    }

    /// One `GET`.
    async fn head(&self) -> act::Result<i64> {
        self.conn.counter("seq").await
    }

    fn wake(&self) -> watch::Receiver<Wake> {
        self.wake.subscribe()
    }
}

#[async_trait]
impl QueueStore for RedisStore {
    /// One `GET` (the schema-1 key `checkpoint`, kept by the upgrade).
    async fn legacy_checkpoint(&self) -> act::Result<i64> {
        self.conn.counter("checkpoint").await
    }

    /// One script: O(subscriptions).
    async fn subscribe(
        &self,
        subscriptions: &[Subscription],
    ) -> act::Result<Vec<SubscriptionState>> {
        self.writable("subscribe")?;
        subscriptions::subscribe(&self.conn, subscriptions).await
    }

    /// One read-only script: O(subscriptions).
    async fn subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        subscriptions::list(&self.conn).await
    }

    /// One script that walks every queue's items (an operator's command).
    async fn retire(&self, names: &[String]) -> act::Result<Vec<Retired>> {
        self.writable("retire reactions")?;
        let out = subscriptions::retire(&self.conn, names).await?;
        self.notify(Wake::new_events);
        Ok(out)
    }

    /// One script: O(items · log n) plus O(reactions).
    async fn enqueue(&self, step: &Correlation) -> act::Result<act::Enqueued> {
        self.writable("enqueue")?;
        let (after, added) = correlation::enqueue(&self.conn, step).await?;
        if added || step.replay.is_some() {
            self.notify(Wake::new_work);
        }
        Ok(after)
    }

    /// One read-only script: O(replays).
    async fn replays(&self) -> act::Result<Vec<Replay>> {
        correlation::replays(&self.conn).await
    }

    /// One script, one round trip: O(log N) in the number of queues per
    /// examined queue, plus the claimed queues' events.
    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        self.writable("claim")?;
        queues::claim(&self.conn, claim).await
    }

    /// One script for the whole call (atomic, like a transaction).
    async fn settle(&self, settlements: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.writable("settle")?;
        let (results, applied) = queues::settle(&self.conn, settlements).await?;
        if applied {
            self.notify(Wake::new_work);
        }
        Ok(results)
    }

    /// Both scripts in one pipeline: one round trip.
    async fn settle_and_claim(
        &self,
        settlements: &[Settlement],
        claim: &Claim,
    ) -> SettledAndClaimed {
        if settlements.is_empty() || claim.queues == 0 || self.writable("settle").is_err() {
            return act::queue::settle_then_claim(self, settlements, claim).await;
        }
        let (settled, claimed) = queues::settle_and_claim(&self.conn, settlements, claim).await;
        let settled = settled.map(|(results, applied)| {
            if applied && act::queue::settle_frees_work(settlements, &results, claim, &claimed) {
                self.notify(Wake::new_work);
            }
            results
        });
        SettledAndClaimed { settled, claimed }
    }

    /// One script for the whole call.
    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        self.writable("renew leases")?;
        queues::renew(&self.conn, leases, lease).await
    }

    /// One script for the whole call.
    async fn release(&self, leases: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.writable("release leases")?;
        let out = queues::release(&self.conn, leases).await?;
        if out.iter().any(Result::is_ok) {
            self.notify(Wake::new_work);
        }
        Ok(out)
    }

    /// One script for the whole call.
    async fn unblock(&self, streams: &[String]) -> act::Result<Vec<String>> {
        self.writable("unblock queues")?;
        let out = queues::unblock(&self.conn, streams).await?;
        if !out.is_empty() {
            self.notify(Wake::new_work);
        }
        Ok(out)
    }

    /// One script: O(items of the queue + subscriptions).
    async fn reset(&self, stream: &str, position: i64) -> act::Result<QueueState> {
        self.writable("reset a queue")?;
        let out = correlation::reset(&self.conn, stream, position).await?;
        self.notify(Wake::new_events);
        Ok(out)
    }

    /// One round trip per page of 500 queues (`blocked` reads only the
    /// blocked ones; `pending` reads all of them).
    async fn queues(&self, filter: &QueueFilter) -> act::Result<Vec<QueueState>> {
        queues::queues(&self.conn, filter).await
    }

    /// One `HGETALL` of the counts the scripts keep.
    async fn pending_by_reaction(&self) -> act::Result<Vec<(String, u64)>> {
        queues::pending_by_reaction(&self.conn).await
    }

    /// One read-only script: the first members of `due`, of the waiting
    /// indexes of `reactions`, and of `delayed`.
    async fn next_due(&self, reactions: &[String]) -> act::Result<Option<Duration>> {
        queues::next_due(&self.conn, reactions).await
    }
}
