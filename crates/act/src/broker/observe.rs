//! What a broker tells user code while it runs, without log parsing:
//! lifecycle events ([`BrokerEvent`], a broadcast channel) and its health
//! ([`Health`], for `/healthz` and `/readyz`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

/// Events a subscriber can buffer before it lags (and is told how many it
/// missed: [`broadcast::error::RecvError::Lagged`]).
pub const EVENTS_CAPACITY: usize = 1024;

/// Something a broker did that an operator or application may act on. Sent
/// on a broadcast channel ([`crate::Broker::events`]): sending never blocks
/// the broker; a slow subscriber misses the oldest events and is told so.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// A queue was blocked (the store accepted the block): it delivers
    /// nothing until an operator unblocks or resets it.
    QueueBlocked {
        /// The queue.
        queue: String,
        /// The reaction that failed (none for an undecodable event of an
        /// item that names no reaction).
        reaction: Option<String>,
        /// The event it blocked at.
        event: i64,
        /// The error stored with the block.
        error: String,
    },
    /// A failed handler call's retry was scheduled in the store.
    RetryScheduled {
        /// The queue.
        queue: String,
        /// The reaction that failed.
        reaction: Option<String>,
        /// The event to retry.
        event: i64,
        /// The attempt that failed (1 for the first); the next is one more.
        attempt: u32,
        /// The backoff: the store schedules the retry at its clock's now
        /// plus this.
        delay: Duration,
        /// The failure.
        error: String,
    },
    /// A handler deferred its event ("not yet"); the store holds the next
    /// attempt until its clock's now plus `delay`.
    Deferred {
        /// The queue.
        queue: String,
        /// The reaction that deferred.
        reaction: Option<String>,
        /// The event deferred.
        event: i64,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// A running batch's lease could not be renewed: its handler was told
    /// to stop; another broker may take the queue over.
    LeaseLost {
        /// The queue.
        queue: String,
    },
    /// The store refused a settlement or a release: the lease was stale or
    /// expired, and the batch will be delivered again by the queue's new
    /// owner.
    SettlementRejected {
        /// The queue.
        queue: String,
        /// Why the store refused it.
        reason: String,
    },
    /// A reaction that was behind caught up with the live checkpoint.
    BackfillFinished {
        /// The reaction.
        reaction: String,
    },
}

/// A broker's health, for liveness and readiness probes.
///
/// Intended rules (tune `T` to the deployment; a few poll periods plus the
/// longest handler is a good start):
/// - **liveness** (`/healthz`, restart when failing): the loop is alive,
///   `running`, and not stuck: [`Health::stuck`]`(T)` is false. The loop
///   completes a turn at least every poll period (default 1 s) and after
///   every wake-up, whether or not its store calls succeed, so a turn older
///   than `T` means a hung call or a blocked runtime.
/// - **readiness** (`/readyz`, take out of rotation when failing): live, and
///   the store reachable: `store_ok`, or fewer than a few
///   `consecutive_store_failures` (each failure pauses the loop for the
///   store backoff, 0.1 s doubling to 2 s by default).
/// - **stalled work** (alert): [`Health::stalled`]`(T)`: work is due but no
///   turn succeeded for `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The loop runs (false before the first turn and once it has ended).
    pub running: bool,
    /// When a loop turn last completed, its store calls failed or not.
    pub last_turn: Instant,
    /// When a loop turn last completed with every store call succeeding
    /// (it correlated, claimed, settled, or found nothing due).
    pub last_progress: Instant,
    /// The last store call succeeded.
    pub store_ok: bool,
    /// Store calls that failed in a row (0 when the last succeeded).
    pub consecutive_store_failures: u32,
    /// The last store failure's text, until a call succeeds.
    pub last_store_error: Option<String>,
    /// After the last turn, work was due: events to correlate, queues to
    /// claim, batches in flight or to settle, a backfill under way.
    pub work_due: bool,
    /// Leases this broker holds (claimed, not yet settled or released).
    pub leases_held: usize,
}

impl Health {
    /// No loop turn completed for `limit` while the loop runs: a hung
    /// store call or a blocked runtime (liveness fails).
    pub fn stuck(&self, limit: Duration) -> bool {
        self.running && self.last_turn.elapsed() > limit
    }

    /// Work is due and no turn succeeded for `limit` (the store is down or
    /// the loop is stuck).
    pub fn stalled(&self, limit: Duration) -> bool {
        self.work_due && self.last_progress.elapsed() > limit
    }

    /// The store is reachable: the last call succeeded, or fewer than
    /// `failures` in a row failed.
    pub fn store_reachable(&self, failures: u32) -> bool {
        self.store_ok || self.consecutive_store_failures < failures
    }
}

/// Where the loop writes what [`crate::Broker::events`] and
/// [`crate::Broker::health`] read.
#[derive(Debug)]
pub(crate) struct Observer {
    events: broadcast::Sender<BrokerEvent>,
    health: Mutex<Health>,
}

impl Default for Observer {
    fn default() -> Self {
        let now = Instant::now();
        Observer {
            events: broadcast::channel(EVENTS_CAPACITY).0,
            health: Mutex::new(Health {
                running: false,
                last_turn: now,
                last_progress: now,
                store_ok: true,
                consecutive_store_failures: 0,
                last_store_error: None,
                work_due: false,
                leases_held: 0,
            }),
        }
    }
}

impl Observer {
    /// Sends to whoever listens (nobody: dropped at no cost).
    pub(crate) fn send(&self, event: BrokerEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<BrokerEvent> {
        self.events.subscribe()
    }

    pub(crate) fn health(&self) -> Health {
        self.lock().clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}
