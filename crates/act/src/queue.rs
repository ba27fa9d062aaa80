//! Queues, leases and the outcomes a broker writes back.
//!
//! A queue is one target stream of reactions. Its pending work is a set of
//! *items*: (event, reaction) pairs that correlation enqueued for it. An item
//! leaves the queue when a broker acknowledges it, so what a queue holds is
//! exactly what is still to be delivered. Besides its items a queue holds a
//! *position* (the id of the last event it acknowledged), a *work mark*
//! (`head`: the highest event ever enqueued for it), retry and block state, a
//! lease, and a fencing `token` that increases on every claim, unblock and
//! reset. Every write a broker makes names the token it was given
//! ([`LeaseRef`]); a store rejects it when the token is stale or the lease has
//! expired on the store's clock.
//!
//! Items are delivered in event id order. An item can arrive *below* the
//! position: a reaction added later backfills its history into a queue that
//! other reactions already moved on. Such an item is still pending (delivered
//! next, in id order among the pending items), which is why a settlement
//! names the queue's *enqueue mark* at claim time: it removes only what the
//! claimed batch could have contained, never an item enqueued since.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;

/// One event assigned to one queue for one reaction by correlation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    /// The queue (target stream).
    pub stream: String,
    /// The event's global id.
    pub event: i64,
    /// The reaction that will handle it (its subscription name).
    pub reaction: String,
    /// Priority of the queue (higher is claimed first). The queue keeps the
    /// highest priority ever enqueued for it.
    pub priority: i32,
}

/// What a broker asks for when it claims. A queue walking through a lapsed
/// batch ([`Lease::suspect`]) gets one event per claim whatever `events`
/// says.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The broker's id, stored as the lease owner.
    pub owner: String,
    /// At most this many queues.
    pub queues: usize,
    /// At most this many events per queue (bounds a hot queue's turn).
    pub events: usize,
    /// How long the lease lasts on the store's clock.
    pub lease: Duration,
    /// The reactions this broker can run. A queue whose next item is for
    /// another reaction is not leased: it is marked as waiting for that
    /// reaction ([`QueueState::waiting`]) and left to a broker that has it.
    /// A batch stops before the first event with an item for a reaction not
    /// in this list.
    pub reactions: Vec<String>,
}

/// One pending event of a claimed queue and the reactions whose items for it
/// are in the batch, in name order (the broker runs them in its own
/// registration order).
#[derive(Debug, Clone)]
pub struct Pending {
    /// The event.
    pub event: Arc<Event>,
    /// The reactions whose items for this event are in the batch. Empty for
    /// an item enqueued by a store of schema version 1 (before items named
    /// their reaction): the broker then runs every reaction to the event's
    /// name whose resolver targets the queue, as version 1 did.
    pub reactions: Vec<String>,
}

/// A claimed queue and its next events, in id order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The lease to present with every write.
    pub lease: Lease,
    /// Up to `Claim::events` pending events with their reactions.
    pub events: Vec<Pending>,
}

/// A queue held by one broker until `expires` on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The queue.
    pub stream: String,
    /// The broker holding it.
    pub owner: String,
    /// Fencing token; writes with an older token are rejected.
    pub token: i64,
    /// When the lease ends on the store's clock.
    pub expires: DateTime<Utc>,
    /// The queue's position when claimed (the compare-and-set value of an ack).
    pub position: i64,
    /// Failed attempts so far at the first pending event, lease expiries
    /// included.
    pub retries: u32,
    /// How many of those failed attempts were leases that ended without a
    /// settlement (a crashed broker, a handler that overran its lease).
    pub lapses: u32,
    /// The queue's enqueue mark when claimed: a settlement removes only items
    /// enqueued up to it.
    pub mark: i64,
    /// True while the queue walks through a batch whose lease lapsed: the
    /// store hands it out one event at a time until an ack passes the end of
    /// that batch, so a handler that crashes its process fails (and blocks)
    /// on the exact event, not on the first of its batch, and the broker
    /// runs it alone so no other queue dies with it. The lapse that started
    /// the walk counts against the first event of the batch (which event
    /// crashed cannot be known); each event the walk acks starts the count
    /// again, as any progress does, so crashes accumulate only on an event
    /// that keeps crashing, and random kills of workers do not block queues
    /// that make progress between them.
    #[serde(default)]
    pub suspect: bool,
}

impl Lease {
    /// The (stream, token) pair that fences a write.
    pub fn reference(&self) -> LeaseRef {
        LeaseRef {
            stream: self.stream.clone(),
            token: self.token,
        }
    }
}

/// Names a lease in a write: the queue and the token it was claimed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The queue.
    pub stream: String,
    /// The token given at claim.
    pub token: i64,
}

/// What a handler presents to acknowledge its events inside its own
/// transaction of the store (a transactional projection:
/// `act_pg::PgStore::project`, `act_sqlite::SqliteStore::project`): the
/// lease it runs under, the queue's position as this batch left it so far
/// (the compare-and-set value), and the enqueue mark read at claim. A store
/// applies such an acknowledgement under the same fencing rule as a
/// settlement ([`Rejection`]), and keeps the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    /// The lease the handler runs under.
    pub lease: LeaseRef,
    /// The position the acknowledgement expects (compare-and-set).
    pub from: i64,
    /// The enqueue mark read at claim.
    pub mark: i64,
}

/// What happened to a claimed batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Everything up to `Settlement::acked` succeeded.
    Ack,
    /// The event after `acked` failed; try again after `delay` (store's clock).
    Retry {
        /// Wait at least this long before the next attempt.
        delay: Duration,
        /// The failure, for operators.
        error: String,
    },
    /// The event after `acked` failed for good; stop the queue until unblocked.
    Block {
        /// The failure, for operators.
        error: String,
    },
    /// The event after `acked` is not due yet: its handler asked to be
    /// called again after `delay` (store's clock). Not a failure: the retry
    /// count stays as it was (restarts at 0 after progress) and no error is
    /// recorded.
    Defer {
        /// Wait at least this long before the next attempt.
        delay: Duration,
    },
}

/// A broker's write-back for one claimed queue. When the store applies it,
/// it also releases the lease; when the store rejects it (stale or expired
/// lease, moved position), nothing about the queue changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// The lease the broker holds.
    pub lease: LeaseRef,
    /// The position read at claim (compare-and-set).
    pub from: i64,
    /// The enqueue mark read at claim.
    pub mark: i64,
    /// The id of the last event of the batch that every one of its reactions
    /// handled (`None`: none did). The store removes the queue's items up to
    /// it (enqueued up to `mark`) and moves the position to it if that is
    /// forward.
    pub acked: Option<i64>,
    /// Ack, retry or block.
    pub outcome: Outcome,
}

impl Settlement {
    fn new(lease: &Lease, acked: Option<i64>, outcome: Outcome) -> Self {
        Settlement {
            lease: lease.reference(),
            from: lease.position,
            mark: lease.mark,
            acked,
            outcome,
        }
    }

    /// Acknowledge every item of the batch up to event `last`.
    pub fn ack(lease: &Lease, last: i64) -> Self {
        Settlement::new(lease, Some(last), Outcome::Ack)
    }

    /// Keep progress up to `acked` and retry the next event after `delay`.
    pub fn retry(
        lease: &Lease,
        acked: Option<i64>,
        delay: Duration,
        error: impl Into<String>,
    ) -> Self {
        let error = error.into();
        Settlement::new(lease, acked, Outcome::Retry { delay, error })
    }

    /// Keep progress up to `acked` and call the next event's handler again
    /// after `delay`, without counting a failure.
    pub fn defer(lease: &Lease, acked: Option<i64>, delay: Duration) -> Self {
        Settlement::new(lease, acked, Outcome::Defer { delay })
    }

    /// Keep progress up to `acked` and block at the next event.
    pub fn block(lease: &Lease, acked: Option<i64>, error: impl Into<String>) -> Self {
        let error = error.into();
        Settlement::new(lease, acked, Outcome::Block { error })
    }
}

/// Why a fenced write was refused. The queue was not changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The queue does not exist.
    #[error("no queue `{0}`")]
    Unknown(String),
    /// Another claim, an unblock or a reset came after this lease.
    #[error("lease on `{stream}` is stale: token {token}, queue is at token {current}")]
    Stale {
        /// The queue.
        stream: String,
        /// The token presented.
        token: i64,
        /// The queue's token.
        current: i64,
    },
    /// The lease expired on the store's clock before the write.
    #[error("lease on `{stream}` (token {token}) expired")]
    Expired {
        /// The queue.
        stream: String,
        /// The token presented.
        token: i64,
    },
    /// The queue's position is not the one the lease read.
    #[error("queue `{stream}` moved: expected position {expected}, found {actual}")]
    Moved {
        /// The queue.
        stream: String,
        /// The position the lease read.
        expected: i64,
        /// The position the store holds.
        actual: i64,
    },
}

/// What an operator sees of a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    /// The queue (target stream).
    pub stream: String,
    /// Id of the last acknowledged event (0: none).
    pub position: i64,
    /// Work mark: id of the highest event ever enqueued for this queue.
    pub head: i64,
    /// The first pending event, if any.
    pub next: Option<i64>,
    /// Exact number of pending events.
    pub lag: u64,
    /// Claim priority (higher first).
    pub priority: i32,
    /// Failed attempts at `next` (lease expiries included).
    pub retries: u32,
    /// Earliest time of the next attempt (store's clock), when retrying.
    pub retry_at: Option<DateTime<Utc>>,
    /// True when stopped until an operator unblocks it.
    pub blocked: bool,
    /// The last failure's text (kept while retrying or blocked).
    pub error: Option<String>,
    /// Current fencing token.
    pub token: i64,
    /// The broker holding a live or expired lease, if any.
    pub lease_owner: Option<String>,
    /// When that lease ends (store's clock).
    pub lease_expires: Option<DateTime<Utc>>,
    /// The reaction whose item is next and which the last broker that looked
    /// did not have: the queue waits for a broker that has it.
    #[serde(default)]
    pub waiting: Option<String>,
    /// While a reset replays the log into this queue: the event id up to
    /// which the replay has re-correlated it. Nothing past it is delivered
    /// until the replay has caught up.
    #[serde(default)]
    pub replay: Option<i64>,
}

/// Which queues to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    /// Only this stream (exact).
    pub stream: Option<String>,
    /// Only blocked queues.
    pub blocked: bool,
    /// Only queues with pending events (lag > 0).
    pub pending: bool,
    /// Only queues whose name sorts after this one (byte order): the cursor
    /// of the next page is the last stream of the previous one.
    pub after: Option<String>,
    /// At most this many rows (ordered by stream, byte order).
    pub limit: Option<usize>,
}

/// Retry bookkeeping shared by every backend: after a failure with progress
/// (some event acknowledged) the count restarts at 1 for the new event,
/// otherwise it grows.
pub fn retries_after_failure(progress: bool, retries: u32) -> u32 {
    if progress {
        1
    } else {
        retries.saturating_add(1)
    }
}

/// Retry bookkeeping of a deferral (shared by every backend): it is not a
/// failure, so the count stays, except that progress (some event
/// acknowledged) starts it again at 0 for the new event.
pub fn retries_after_deferral(progress: bool, retries: u32) -> u32 {
    if progress {
        0
    } else {
        retries
    }
}

pub use crate::store::settle_then_claim;

/// What [`crate::QueueStore::settle_and_claim`] did: each half's own result.
/// A failure of one half never hides what the other did: leases the claim
/// took reach the caller even when the settle failed, and the reverse.
#[derive(Debug)]
pub struct SettledAndClaimed {
    /// The settle's result, as [`crate::QueueStore::settle`] returns it.
    pub settled: crate::Result<Vec<Result<(), Rejection>>>,
    /// The claim's result, as [`crate::QueueStore::claim`] returns it;
    /// `Ok` and empty when the claim did not run (the settle failed first,
    /// or the claim asked for no queue).
    pub claimed: crate::Result<Vec<Batch>>,
}

/// Whether the settle of a [`crate::QueueStore::settle_and_claim`] left
/// other brokers something to look at: the claim failed (the settle's own
/// rule decides), or a settlement was applied and either the claim filled
/// every slot it asked for (work may be left) or a queue a settlement
/// released is not among the claimed ones (free, or without work: a broker
/// waiting for it may end).
/// Otherwise the caller's own claim took everything the settle freed, and
/// a store skips its wake-up: brokers woken for nothing claim for nothing.
pub fn settle_frees_work(
    settlements: &[Settlement],
    results: &[Result<(), Rejection>],
    claim: &Claim,
    claimed: &crate::Result<Vec<Batch>>,
) -> bool {
    let Ok(claimed) = claimed else {
        return true;
    };
    let mut applied = settlements
        .iter()
        .zip(results)
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| s.lease.stream.as_str())
        .peekable();
    if applied.peek().is_none() {
        return false;
    }
    claimed.len() >= claim.queues
        || applied.any(|stream| !claimed.iter().any(|b| b.lease.stream == stream))
}

/// The order in which a store applies a settle call: blocks first, then acks
/// and retries, each group in the order given. Returns indexes into
/// `settlements`.
pub fn settle_order(settlements: &[Settlement]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..settlements.len()).collect();
    order.sort_by_key(|&i| !matches!(settlements[i].outcome, Outcome::Block { .. }));
    order
}

/// The error a store records when it counts a lease that ended without a
/// settlement as a failed attempt (one text for every backend).
pub fn lapse_error(owner: &str) -> String {
    format!(
        "the lease of `{owner}` expired without a settlement (the process crashed or the handler overran its lease)"
    )
}
