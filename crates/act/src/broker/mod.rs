//! The broker: the delivery loop of an application.
//!
//! One loop per broker: register the application's reactions (durable
//! subscriptions), correlate new events into queues (and backfill reactions
//! that are behind, and replay reset queues, beside live traffic), claim
//! queues with due work that this broker's reactions can handle (leases with
//! fencing tokens), run each claimed queue's batch in its own task (queues
//! concurrently up to `concurrency`, events within a queue strictly in
//! order), and settle finished batches in one store call: ack, retry with
//! backoff, or block. Leases of long batches are renewed; a handler whose
//! lease cannot be renewed is told so through its context. While the store
//! is unreachable the loop backs off (see [`StoreBackoff`]).
//!
//! Run it three ways:
//! - [`Broker::settle`]: until every queue is caught up or blocked, waiting
//!   out scheduled retries and other brokers' leases (`act settle`; what a
//!   first test wants);
//! - [`Broker::run_once`]: one pass, until no due work is left *now* (it
//!   returns while a retry is scheduled: tests with a manual clock);
//! - [`Broker::start`]: in the background until [`BrokerHandle::shutdown`],
//!   which stops claiming, lets in-flight batches finish within the grace
//!   period, settles them and releases every lease.
//!
//! ```
//! # use std::sync::Arc;
//! # use act::{Act, BrokerOptions, MemoryStore};
//! # #[tokio::main] async fn main() -> act::Result<()> {
//! let app = Act::builder(Arc::new(MemoryStore::new())).build()?;
//! let stats = app.broker(BrokerOptions::default()).run_once().await?;
//! assert_eq!(stats.events, 0);
//! # Ok(()) }
//! ```

pub(crate) mod correlate;
mod dispatch;
mod observe;
mod pacer;
mod runner;

pub use dispatch::INVALID_TARGET_PREFIX;
pub use observe::{BrokerEvent, Health, EVENTS_CAPACITY};
pub use pacer::StoreBackoff;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::Act;
use crate::error::{Error, Result};

use observe::Observer;
use runner::Mode;

/// How a broker runs.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The lease owner name (default: `broker-{pid}-{random}`).
    pub owner: String,
    /// Queues processed at once.
    pub concurrency: usize,
    /// Events per claimed queue per turn (bounds how long a hot queue holds
    /// its lease before others get a turn).
    pub batch: usize,
    /// Lease length on the store's clock.
    pub lease: Duration,
    /// How often leases of running batches are renewed (default: lease / 3).
    pub renew_every: Option<Duration>,
    /// Fallback polling period when no wake-up arrives.
    pub poll: Duration,
    /// Events read per live correlation step.
    pub correlate_batch: usize,
    /// Events read per backfill or replay step (a reaction catching up, a
    /// reset queue): one page is one store write, so smaller pages keep the
    /// latency of live traffic low while a backfill runs.
    pub backfill_batch: usize,
    /// How long shutdown waits for in-flight batches.
    pub grace: Duration,
    /// How often the broker registers its reactions again (operators see
    /// which reactions running brokers have; the broker learns of resets and
    /// retirements). Zero: only at start.
    pub heartbeat: Duration,
    /// Pauses after failed store calls.
    pub store_backoff: StoreBackoff,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            owner: default_owner(),
            concurrency: 32,
            batch: 100,
            lease: Duration::from_secs(30),
            renew_every: None,
            poll: Duration::from_secs(1),
            correlate_batch: 1000,
            backfill_batch: 1000,
            grace: Duration::from_secs(10),
            heartbeat: Duration::from_secs(5),
            store_backoff: StoreBackoff::default(),
        }
    }
}

impl BrokerOptions {
    /// Sets the owner name.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Sets the concurrency.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the batch size.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Sets the lease length.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the renewal period.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// Sets the polling period.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Sets the shutdown grace period.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets the registration heartbeat.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Sets the pauses after failed store calls.
    pub fn store_backoff(mut self, backoff: StoreBackoff) -> Self {
        self.store_backoff = backoff;
        self
    }

    /// Sets the events read per backfill or replay step.
    pub fn backfill_batch(mut self, n: usize) -> Self {
        self.backfill_batch = n.max(1);
        self
    }

    pub(crate) fn renew_period(&self) -> Duration {
        self.renew_every.unwrap_or(self.lease / 3)
    }
}

fn default_owner() -> String {
    format!(
        "broker-{}-{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    )
}

/// What a broker did. Counters only grow. The same figures, per reaction
/// where it makes sense and summed over the process's brokers, go to the
/// metrics facade ([`crate::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Events acknowledged (every reaction for them succeeded or was skipped).
    pub events: u64,
    /// Successful handler calls.
    pub reactions: u64,
    /// Failures scheduled for retry.
    pub retries: u64,
    /// Queues blocked.
    pub blocked: u64,
    /// Reactions skipped after exhausting retries.
    pub skipped: u64,
    /// Events a handler deferred to a later time (not failures).
    pub deferred: u64,
    /// Queues claimed.
    pub claims: u64,
    /// Events correlated live (read past the live checkpoint).
    pub correlated: u64,
    /// Events read by backfill and replay steps.
    pub backfilled: u64,
    /// Handler calls cancelled past their reaction's timeout.
    pub timeouts: u64,
    /// Settlements, renewals or releases the store refused (stale lease).
    pub rejected: u64,
    /// Leases lost while a batch ran.
    pub lost: u64,
    /// Store calls that failed and were retried.
    pub errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub events: AtomicU64,
    pub reactions: AtomicU64,
    pub retries: AtomicU64,
    pub blocked: AtomicU64,
    pub skipped: AtomicU64,
    pub deferred: AtomicU64,
    pub claims: AtomicU64,
    pub correlated: AtomicU64,
    pub backfilled: AtomicU64,
    pub timeouts: AtomicU64,
    pub rejected: AtomicU64,
    pub lost: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            events: r(&self.events),
            reactions: r(&self.reactions),
            retries: r(&self.retries),
            blocked: r(&self.blocked),
            skipped: r(&self.skipped),
            deferred: r(&self.deferred),
            claims: r(&self.claims),
            correlated: r(&self.correlated),
            backfilled: r(&self.backfilled),
            timeouts: r(&self.timeouts),
            rejected: r(&self.rejected),
            lost: r(&self.lost),
            errors: r(&self.errors),
        }
    }
}

/// A broker of one application. See the module docs.
#[derive(Debug, Clone)]
pub struct Broker {
    act: Act,
    options: BrokerOptions,
    counters: Arc<Counters>,
    observer: Arc<Observer>,
}

impl Broker {
    /// A broker for `act` (usually through [`Act::broker`]).
    pub fn new(act: Act, options: BrokerOptions) -> Self {
        Broker {
            act,
            options,
            counters: Arc::default(),
            observer: Arc::default(),
        }
    }

    /// Its options.
    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    /// What it did so far, over all runs.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Its lifecycle events from now on ([`BrokerEvent`]), over all runs.
    /// Sending never blocks the broker: a subscriber that falls more than
    /// [`EVENTS_CAPACITY`] events behind is told how many it missed. Cheap;
    /// without subscribers no event is built.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<BrokerEvent> {
        self.observer.subscribe()
    }

    /// Its health now (see [`Health`] for the probe rules). A lock and a
    /// copy; no store call.
    pub fn health(&self) -> Health {
        self.observer.health()
    }

    /// One pass: runs until no due work is left *now*: every reaction
    /// correlated (backfills and replays included), nothing claimable,
    /// nothing in flight. It returns while a failed handler's retry is still
    /// scheduled, and does not wait for queues leased by other brokers (use
    /// [`Broker::settle`] for that). Committed events the store cannot show
    /// followers yet (PostgreSQL: behind a transaction still running) are
    /// waited for up to 1 s. For tests that drive a
    /// [`crate::clock::ManualClock`]: advance the clock past a retry, then run
    /// another pass. Returns the counters of this broker.
    pub async fn run_once(&self) -> Result<Stats> {
        self.run(Mode::Once, CancellationToken::new()).await
    }

    /// Runs until every committed event is correlated and every queue is
    /// caught up or blocked, waiting out scheduled retries (on the store's
    /// clock), other brokers' leases and transactions that hide committed
    /// events: what `act settle` does, and what a first test wants. With a
    /// [`crate::clock::ManualClock`] that nobody advances, a scheduled retry never
    /// comes due: use [`Broker::run_once`] there.
    pub async fn settle(&self) -> Result<Stats> {
        self.run(Mode::Settle, CancellationToken::new()).await
    }

    /// Runs in the background until shut down.
    pub fn start(&self) -> BrokerHandle {
        // Every counter series exists (at 0) once this returns, not only
        // once the spawned loop first runs: a scrape right after a worker
        // says it started shows them all.
        crate::metrics::zero(self.act.registry().reactions().iter().map(|r| r.name()));
        let shutdown = CancellationToken::new();
        let me = self.clone();
        let token = shutdown.clone();
        let join = tokio::spawn(async move { me.run(Mode::Forever, token).await });
        BrokerHandle {
            shutdown,
            join: Some(join),
            counters: self.counters.clone(),
            observer: self.observer.clone(),
        }
    }

    async fn run(&self, mode: Mode, shutdown: CancellationToken) -> Result<Stats> {
        runner::Runner::new(
            self.act.clone(),
            self.options.clone(),
            self.counters.clone(),
            self.observer.clone(),
            shutdown,
        )
        .run(mode)
        .await?;
        Ok(self.stats())
    }
}

/// A running broker. [`BrokerHandle::shutdown`] stops it gracefully; dropping
/// the handle aborts it (its leases then expire on the store's clock).
#[derive(Debug)]
pub struct BrokerHandle {
    shutdown: CancellationToken,
    join: Option<JoinHandle<Result<Stats>>>,
    counters: Arc<Counters>,
    observer: Arc<Observer>,
}

impl BrokerHandle {
    /// What it did so far.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Its lifecycle events from now on (see [`Broker::events`]).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<BrokerEvent> {
        self.observer.subscribe()
    }

    /// Its health now (see [`Health`]): what `/healthz` and `/readyz`
    /// decide on. No store call.
    pub fn health(&self) -> Health {
        self.observer.health()
    }

    /// Stops claiming, waits for in-flight batches up to the grace period,
    /// settles them, releases every lease, and returns the counters.
    pub async fn shutdown(mut self) -> Result<Stats> {
        self.shutdown.cancel();
        match self.join.take() {
            Some(join) => join.await.map_err(|e| Error::Store {
                store: "broker".into(),
                source: Box::new(e),
            })?,
            None => Ok(self.stats()),
        }
    }

    /// True once the loop has ended (an error, or after shutdown).
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.is_finished())
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        if let Some(join) = self.join.take() {
            join.abort();
        }
    }
}
