//! Queues, leases and the outcomes a broker writes back.
//!
//! A queue is one target stream of reactions. It holds a *position* (the id of
//! the last event it acknowledged), a *work mark* (`head`: the id of the last
//! event enqueued for it), `next` (the first pending event, if any), retry and
//! block state, a lease, and a fencing `token` that increases on every claim,
//! unblock and reset. Every write a broker makes names the token it was given
//! ([`LeaseRef`]); a store rejects it when the token is stale or the lease has
//! expired on the store's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One event assigned to one queue by correlation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    /// The queue (target stream).
    pub stream: String,
    /// The event's global id.
    pub event: i64,
    /// Priority of the queue (higher is claimed first). The queue keeps the
    /// highest priority ever enqueued for it.
    pub priority: i32,
}

/// What a broker asks for when it claims.
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
}

/// A claimed queue and its next events, in id order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The lease to present with every write.
    pub lease: Lease,
    /// Up to `Claim::events` pending events after `lease.position`.
    pub events: Vec<std::sync::Arc<crate::Event>>,
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
    /// Failed attempts so far at the event after `position`.
    pub retries: u32,
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

/// What happened to a claimed batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Everything up to `Settlement::to` succeeded.
    Ack,
    /// The event after `to` failed; try again after `delay` (store's clock).
    Retry {
        /// Wait at least this long before the next attempt.
        delay: Duration,
        /// The failure, for operators.
        error: String,
    },
    /// The event after `to` failed for good; stop the queue until unblocked.
    Block {
        /// The failure, for operators.
        error: String,
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
    /// The new position: the id of the last event that succeeded (`from`
    /// when none did).
    pub to: i64,
    /// Ack, retry or block.
    pub outcome: Outcome,
}

impl Settlement {
    /// Acknowledge everything up to `to`.
    pub fn ack(lease: &Lease, to: i64) -> Self {
        Settlement {
            lease: lease.reference(),
            from: lease.position,
            to,
            outcome: Outcome::Ack,
        }
    }

    /// Keep progress up to `to` and retry the next event after `delay`.
    pub fn retry(lease: &Lease, to: i64, delay: Duration, error: impl Into<String>) -> Self {
        Settlement {
            lease: lease.reference(),
            from: lease.position,
            to,
            outcome: Outcome::Retry {
                delay,
                error: error.into(),
            },
        }
    }

    /// Keep progress up to `to` and block at the next event.
    pub fn block(lease: &Lease, to: i64, error: impl Into<String>) -> Self {
        Settlement {
            lease: lease.reference(),
            from: lease.position,
            to,
            outcome: Outcome::Block {
                error: error.into(),
            },
        }
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
    /// Work mark: id of the last event enqueued for this queue.
    pub head: i64,
    /// The first pending event, if any.
    pub next: Option<i64>,
    /// Exact number of events enqueued after `position`.
    pub lag: u64,
    /// Claim priority (higher first).
    pub priority: i32,
    /// Failed attempts at `next`.
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
    /// At most this many rows (ordered by stream).
    pub limit: Option<usize>,
}

/// Retry bookkeeping shared by every backend: after a failure with progress
/// (`to > from`) the count restarts at 1 for the new event, otherwise it grows.
pub fn retries_after_failure(from: i64, to: i64, retries: u32) -> u32 {
    if to > from {
        1
    } else {
        retries.saturating_add(1)
    }
}

/// The order in which a store applies a settle call: blocks first, then acks
/// and retries, each group in the order given. Returns indexes into
/// `settlements`.
pub fn settle_order(settlements: &[Settlement]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..settlements.len()).collect();
    order.sort_by_key(|&i| !matches!(settlements[i].outcome, Outcome::Block { .. }));
    order
}
