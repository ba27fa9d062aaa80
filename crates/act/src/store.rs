//! The two ports every backend implements: [`EventStore`] (the log) and
//! [`QueueStore`] (correlation, leases, positions). They say *what* a store
//! must do; a backend crate says *how*. The conformance kit (`act::tck`) checks
//! every promise below on every backend.
//!
//! All methods are async and dyn-compatible, so an application can pick its
//! store at run time (`Arc<dyn Store>`). Times that matter for correctness
//! (lease expiry, retry time, `created`) come from the store's clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

/// What an [`EventStore::wake`] signal says changed: two counters that
/// only grow (wrapping). A receiver compares them with the last value it
/// saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// Moves after commits of new events, and whenever the backend cannot
    /// tell what changed (another process's commit on SQLite, a lost
    /// wake-up connection): the log may hold events to correlate.
    pub events: u64,
    /// Moves after every change: queues may hold claimable work.
    pub work: u64,
}

impl Wake {
    /// New events were committed (queues may follow).
    pub fn new_events(&mut self) {
        self.events = self.events.wrapping_add(1);
        self.work = self.work.wrapping_add(1);
    }

    /// Queues changed (enqueued, settled, released, unblocked): work may
    /// be claimable; the log did not change.
    pub fn new_work(&mut self) {
        self.work = self.work.wrapping_add(1);
    }

    /// True when `self` has events that `seen` had not.
    pub fn has_events_since(&self, seen: &Wake) -> bool {
        self.events != seen.events
    }
}

use crate::error::Result;
use crate::event::{Append, Event};
use crate::query::Query;
use crate::queue::{
    Batch, Claim, LeaseRef, QueueFilter, QueueState, Rejection, SettledAndClaimed, Settlement,
};
use crate::subscription::{Correlation, Replay, Retired, Subscription, SubscriptionState};

/// The event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `append.messages` to `append.stream` atomically: all or none,
    /// consecutive versions, increasing ids.
    ///
    /// Fails with [`crate::Error::Concurrency`] (naming expected and actual
    /// versions, appending nothing) when `append.expected` does not hold. When
    /// `append.idempotency_key` was already used, appends nothing and returns
    /// the events of the first append with that key, even if the version
    /// check would now fail. Wakes subscribers after the commit.
    async fn append(&self, append: Append) -> Result<Vec<Arc<Event>>>;

    /// Events matching `query`, in id order (descending when backward).
    /// Never returns an event with a lower id than one a previous call of the
    /// same reader already returned, unless asked for that range explicitly.
    async fn query(&self, query: &Query) -> Result<Vec<Arc<Event>>>;

    /// The highest visible event id (0 for an empty store).
    async fn head(&self) -> Result<i64>;

    /// A signal that changes after commits and after queue changes that may
    /// make work claimable (enqueue, release with pending work, unblock,
    /// reset). Backends that can push across processes do so here; brokers
    /// also poll, so a missed signal delays but never loses work. Its value
    /// says what changed ([`Wake`]): a broker reads the log again only
    /// after new events, and only claims after a settle.
    fn wake(&self) -> watch::Receiver<Wake>;

    /// The backend's own type, for what only it offers (the transactional
    /// projections of SQLite and PostgreSQL: downcast to `SqliteStore` or
    /// `PgStore` and call `project`). `None` by default (and for wrappers).
    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        None
    }
}

/// Queues: subscriptions and their correlation, the work index, leases,
/// positions. See [`crate::queue`] and [`crate::subscription`] for the model.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// The one correlation checkpoint of a store upgraded from schema
    /// version 1 (0 for a store created by this version): where reactions
    /// without a declared start go on after the upgrade.
    async fn legacy_checkpoint(&self) -> Result<i64>;

    /// Records each subscription the store has not seen (its checkpoint
    /// starts at its `start`), refreshes the `seen` time, event names and
    /// target of those it has (retired ones are left as they are), and
    /// returns every subscription the store holds, ordered by name. One
    /// transaction.
    async fn subscribe(&self, subscriptions: &[Subscription]) -> Result<Vec<SubscriptionState>>;

    /// Every subscription, ordered by name. Read only.
    async fn subscriptions(&self) -> Result<Vec<SubscriptionState>>;

    /// Retires reactions: marks them retired, drops their pending items from
    /// every queue (a queue waiting for one of them stops waiting) and their
    /// replays. A retired reaction is never correlated or enqueued again.
    /// Fails with [`crate::Error::UnknownReaction`] (changing nothing) when a
    /// name is not a subscription.
    async fn retire(&self, names: &[String]) -> Result<Vec<Retired>>;

    /// Applies one correlation step (see [`Correlation`]): for each of its
    /// reactions whose checkpoint (or, for a replay step, whose replay on
    /// that queue) is at `step.from`, moves it to `step.to` and records its
    /// items of `step.work`; the items of the other reactions are dropped.
    /// Items for events at or below a queue's reset floor are dropped; items
    /// a queue already holds are not added twice. Creates queues on first
    /// sight, moves work marks and priorities up, never down. A replay that
    /// reaches its `until` ends. Returns, per reaction of the step, its
    /// checkpoint (replay position) after the call, `None` when it is
    /// retired, unknown, or (replay) has no replay on that queue, and
    /// whether this call moved it.
    async fn enqueue(&self, step: &Correlation) -> Result<crate::subscription::Enqueued>;

    /// The replays under way (reset queues being re-correlated), ordered by
    /// stream then reaction.
    async fn replays(&self) -> Result<Vec<Replay>>;

    /// Leases up to `claim.queues` queues with due work (pending, not
    /// blocked, retry time passed, no live lease, not waiting for a reaction
    /// outside `claim.reactions`), highest priority first, then the oldest
    /// pending event first, and returns each with up to `claim.events` of its
    /// pending events in id order (never past a replay's position). Every
    /// claim increases the queue's fencing token. A queue whose lease ended
    /// without a settlement counts that as a failed attempt ([`crate::Lease::lapses`],
    /// error [`crate::queue::lapse_error`]) before it is leased again. A queue
    /// whose first pending event has an item for a reaction this broker lacks
    /// is not leased but marked as waiting for it; a batch stops before the
    /// first such event. Exclusive: a queue with a live lease is never
    /// returned.
    async fn claim(&self, claim: &Claim) -> Result<Vec<Batch>>;

    /// Applies settlements (blocks first, then acks and retries), each only
    /// if its lease is live, its token current and the queue still at
    /// `from`; removes the acknowledged items (up to `acked`, enqueued up to
    /// `mark`) and releases each lease. Returns one result per settlement, in
    /// order. One call, one transaction where the backend has them.
    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<Result<(), Rejection>>>;

    /// [`QueueStore::settle`] and then [`QueueStore::claim`], in that
    /// order: the claim sees every settlement the settle applied (a queue
    /// just acknowledged may be leased again at once, in claim order: the
    /// order a settle followed by a claim gives). What a broker calls when
    /// it writes back finished batches and has free slots. Backends on a
    /// server send both in one round trip (PostgreSQL pipelines them on one
    /// connection, each in a transaction of its own; Redis sends both
    /// scripts in one pipeline); the default calls one after the other and
    /// does not claim when the settle failed. Each half reports its own
    /// result ([`SettledAndClaimed`]); an empty `settlements` only claims,
    /// a claim of no queue only settles.
    async fn settle_and_claim(
        &self,
        settlements: &[Settlement],
        claim: &Claim,
    ) -> SettledAndClaimed {
        settle_then_claim(self, settlements, claim).await
    }

    /// Extends live leases to `lease` from now (store's clock). An expired or
    /// stale lease is not renewed: its holder must stop.
    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<Result<chrono::DateTime<chrono::Utc>, Rejection>>>;

    /// Gives leases back without moving positions (shutdown, lost work).
    /// Not a failed attempt.
    async fn release(&self, leases: &[LeaseRef]) -> Result<Vec<Result<(), Rejection>>>;

    /// Clears the block of these queues: retries reset, error cleared, token
    /// increased; the queue resumes at the event that failed. Returns the
    /// streams that were blocked and now are not (each once, in the order
    /// given).
    async fn unblock(&self, streams: &[String]) -> Result<Vec<String>>;

    /// Replays a queue from the log: drops its pending items, moves it to
    /// `position` (also its floor: items for events at or below it are
    /// dropped when they arrive later), clears retries, block, waiting and
    /// lease, increases the token, and records a [`Replay`] for every active
    /// reaction that may target it (static target this queue, or dynamic)
    /// and has correlated past `position`. Brokers run the replays; the queue
    /// delivers nothing past a replay's position until it has caught up.
    /// Creates the queue when some reaction may target it. Fails with
    /// [`crate::Error::InvalidInput`] for a negative position or one past the
    /// log's head, and [`crate::Error::UnknownQueue`] for a queue that does
    /// not exist and that no reaction can target.
    async fn reset(&self, stream: &str, position: i64) -> Result<QueueState>;

    /// Queues and their state for operators, ordered by stream (byte order).
    async fn queues(&self, filter: &QueueFilter) -> Result<Vec<QueueState>>;

    /// Per reaction, its pending items over every queue (enqueued, not yet
    /// acknowledged; blocked and waiting queues included), ordered by name
    /// (byte order); reactions with none are left out, and items enqueued
    /// by schema version 1 (no reaction) are counted under `""`. Read
    /// only. What the `act_reaction_lag` gauge shows ([`crate::metrics`]).
    /// Costs one pass over the pending items on SQLite, PostgreSQL and in
    /// memory (a sampled gauge, not a hot path), one small hash read on
    /// Redis (whose scripts keep the counts).
    async fn pending_by_reaction(&self) -> Result<Vec<(String, u64)>>;

    /// How long until some pending, unblocked queue that a broker with
    /// `reactions` may claim becomes claimable (its retry time or a lease
    /// passes), on the store's clock: `Some(ZERO)` when one is claimable now,
    /// `None` when none has deliverable work.
    async fn next_due(&self, reactions: &[String]) -> Result<Option<Duration>>;
}

/// [`QueueStore::settle_and_claim`] as two calls, one after the other: the
/// default, and what a backend that pipelines the pair falls back to for
/// the cases it does not (an empty settle, a claim of no queue). No claim
/// runs when the settle failed.
pub async fn settle_then_claim<S: QueueStore + ?Sized>(
    store: &S,
    settlements: &[Settlement],
    claim: &Claim,
) -> SettledAndClaimed {
    let settled = if settlements.is_empty() {
        Ok(Vec::new())
    } else {
        store.settle(settlements).await
    };
    let claimed = if settled.is_err() || claim.queues == 0 {
        Ok(Vec::new())
    } else {
        store.claim(claim).await
    };
    SettledAndClaimed { settled, claimed }
}

/// How a backend opens a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenMode {
    /// Create the store when it is missing and bring its schema up to date
    /// (brokers, `act demo`, applications).
    #[default]
    Create,
    /// Open a store that exists and bring its schema up to date; never create
    /// one ([`crate::Error::Missing`]): operator commands that write
    /// (`unblock`, `reset`, `retire`).
    Existing,
    /// Open a store that exists for reading: never create it, never migrate
    /// or write anything (works against a read-only database; SQLite may
    /// still create its empty `-wal`/`-shm` companion files where the
    /// directory allows it); a schema older than this code is
    /// [`crate::Error::Schema`] asking for an upgrade (`status`, `blocked`,
    /// `events`, `reactions`).
    ReadOnly,
}

/// A store that is both: what applications and brokers hold.
pub trait Store: EventStore + QueueStore {}

impl<T: EventStore + QueueStore + ?Sized> Store for T {}
