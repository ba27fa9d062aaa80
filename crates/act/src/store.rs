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

use crate::error::Result;
use crate::event::{Append, Event};
use crate::query::Query;
use crate::queue::{Batch, Claim, LeaseRef, QueueFilter, QueueState, Rejection, Settlement, Work};

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
    /// also poll, so a missed signal delays but never loses work.
    fn wake(&self) -> watch::Receiver<u64>;
}

/// Queues: correlation checkpoint, work index, leases, positions.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// The correlation checkpoint: every event with an id up to it has been
    /// run through the resolvers and its work enqueued.
    async fn checkpoint(&self) -> Result<i64>;

    /// Atomically records `work` and moves the checkpoint from `from` to `to`
    /// (compare-and-set). When the checkpoint is no longer `from` (another
    /// broker correlated first), nothing is written. Creates queues on first
    /// sight, moves their work marks up, never down. Enqueueing an event a
    /// queue already has is a no-op. Returns the checkpoint after the call;
    /// while another broker is in the middle of moving it, a store may
    /// return the last committed checkpoint at once instead of waiting (the
    /// caller then sees no progress and leaves correlation to the other).
    async fn enqueue(&self, work: &[Work], from: i64, to: i64) -> Result<i64>;

    /// Leases up to `claim.queues` queues with due work (pending, not blocked,
    /// retry time passed, no live lease), highest priority first, then the
    /// oldest pending event first, and returns each with up to `claim.events`
    /// of its pending events in id order. Every claim increases the queue's
    /// fencing token. Exclusive: a queue with a live lease is never returned.
    async fn claim(&self, claim: &Claim) -> Result<Vec<Batch>>;

    /// Applies settlements (blocks first, then acks and retries), each only
    /// if its lease is live, its token current and the queue still at
    /// `from`; releases each lease. Returns one result per settlement, in
    /// order. One call, one transaction where the backend has them.
    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<Result<(), Rejection>>>;

    /// Extends live leases to `lease` from now (store's clock). An expired or
    /// stale lease is not renewed: its holder must stop.
    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<Result<chrono::DateTime<chrono::Utc>, Rejection>>>;

    /// Gives leases back without moving positions (shutdown, lost work).
    async fn release(&self, leases: &[LeaseRef]) -> Result<Vec<Result<(), Rejection>>>;

    /// Clears the block of these queues: retries reset, error cleared, token
    /// increased; the queue resumes at the event that failed. Returns the
    /// streams that were blocked and now are not.
    async fn unblock(&self, streams: &[String]) -> Result<Vec<String>>;

    /// Moves a queue to `position` (replay from there, or skip ahead), clears
    /// retries, block and lease, increases the token. Fails with
    /// [`crate::Error::UnknownQueue`] for a queue that does not exist.
    async fn reset(&self, stream: &str, position: i64) -> Result<QueueState>;

    /// Queues and their state for operators, ordered by stream.
    async fn queues(&self, filter: &QueueFilter) -> Result<Vec<QueueState>>;

    /// How long until some pending, unblocked queue becomes claimable (its
    /// retry time or a lease passes), on the store's clock: `Some(ZERO)` when
    /// one is claimable now, `None` when no unblocked queue has pending work.
    async fn next_due(&self) -> Result<Option<Duration>>;
}

/// A store that is both: what applications and brokers hold.
pub trait Store: EventStore + QueueStore {}

impl<T: EventStore + QueueStore + ?Sized> Store for T {}
