//! Durable subscriptions: what a store records of each reaction it has seen,
//! and the correlation steps that fill queues from the log.
//!
//! Every reaction is a subscription with a stable name. The store keeps, per
//! subscription, its *start* (it handles events with an id above it) and its
//! own correlation *checkpoint* (every event up to it has been run through
//! its resolver and its work enqueued). Reactions whose checkpoints are equal
//! are correlated together, from one read of the log: that is every
//! caught-up reaction. A reaction added later starts at its declared start
//! and backfills in bounded pages until its checkpoint reaches the others',
//! then shares their read.
//!
//! A [`Correlation`] is one step: it moves the checkpoints of some reactions
//! from `from` to `to` (compare-and-set, per reaction) and enqueues the work
//! those reactions' resolvers found in between. A reset of a queue records a
//! [`Replay`] per reaction that may target it; brokers re-correlate the log
//! into that queue alone, with the same kind of step.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::queue::Work;

/// Where a reaction seen for the first time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// Every event in the log, history included (projections, read models).
    Beginning,
    /// Only events committed after the reaction is first registered (side
    /// effects: e-mails, calls to other systems).
    Now,
    /// Events with an id above this one.
    After(i64),
}

/// A reaction as a broker registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The reaction's name (unique in a store).
    pub name: String,
    /// The event names it handles (for operators; correlation runs the
    /// reaction's own code).
    pub events: Vec<String>,
    /// Its target queue when its resolver is static, `None` when dynamic.
    pub target: Option<String>,
    /// Where it starts if the store has not seen it yet: it handles events
    /// with an id above this (see [`resolve_start`]).
    pub start: i64,
}

/// What a store records of a reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    /// The reaction's name.
    pub name: String,
    /// The event names it handled when last registered.
    pub events: Vec<String>,
    /// Its static target queue, if any.
    pub target: Option<String>,
    /// It handles events with an id above this.
    pub start: i64,
    /// Every event up to this id has been correlated for it.
    pub checkpoint: i64,
    /// When the store first saw it.
    pub created: DateTime<Utc>,
    /// When a broker that has it last registered it (brokers do so when they
    /// start and then every [`crate::BrokerOptions::heartbeat`]).
    pub seen: DateTime<Utc>,
    /// When it was retired (its pending work dropped); `None` while active.
    pub retired: Option<DateTime<Utc>>,
}

/// What retiring a reaction dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The reaction.
    pub name: String,
    /// Pending items of it that were removed from queues.
    pub dropped: u64,
    /// Queues that held them.
    pub queues: u64,
    /// False when it was already retired (nothing dropped this time).
    pub newly: bool,
}

/// A reset queue being re-correlated from the log for one reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// The queue.
    pub stream: String,
    /// The reaction.
    pub reaction: String,
    /// Every event up to this id has been re-correlated into the queue.
    pub position: i64,
    /// The reaction's checkpoint at the reset: the replay ends there (later
    /// events reach the queue through the reaction's own correlation).
    pub until: i64,
}

/// One correlation step: moves the checkpoint of each of `reactions` from
/// `from` to `to` and enqueues `work` (items of those reactions only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The reactions whose checkpoints (or replays) this step moves; each
    /// must be at `from`, checked per reaction.
    pub reactions: Vec<String>,
    /// When set, the step moves the replays of `reactions` on this queue
    /// instead of their checkpoints, and its work targets this queue only.
    pub replay: Option<String>,
    /// Where the step starts.
    pub from: i64,
    /// Where it ends: every event in `(from, to]` was read.
    pub to: i64,
    /// What the reactions' resolvers found.
    pub work: Vec<Work>,
}

/// What [`crate::QueueStore::enqueue`] did, per reaction of the step, in
/// the step's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Enqueued {
    /// Its checkpoint (replay position) after the call; `None` when it is
    /// retired (its replay is over or gone).
    pub positions: Vec<Option<i64>>,
    /// True when this call moved it (it was at the step's `from`); false
    /// when another call had moved it, even to the same place. A broker
    /// that reads the same page as another and enqueues second learns here
    /// that it lost the race.
    pub moved: Vec<bool>,
}

/// The start a new reaction gets: the declared one, or the default.
///
/// The default is the beginning of the log while the application registers
/// its reactions for the first time (no subscription recorded yet): a new
/// application delivers its whole log to every reaction. On a store upgraded
/// from schema version 1 (one correlation checkpoint for all reactions, at
/// `legacy`), it is that checkpoint, so reactions that ran before the
/// upgrade go on where they were. Once the store has subscriptions, a new
/// reaction without a declared start is refused when the log holds events:
/// replaying history is right for a projection and wrong for a reaction with
/// side effects (a reaction that sends e-mails, added to a log of a million
/// events, would send a million e-mails), so the code must say which it is.
pub fn resolve_start(
    name: &str,
    declared: Option<Start>,
    head: i64,
    legacy: i64,
    first_registration: bool,
) -> Result<i64> {
    match declared {
        Some(Start::Beginning) => Ok(0),
        Some(Start::Now) => Ok(head.max(0)),
        Some(Start::After(id)) if id < 0 => Err(Error::InvalidInput(format!(
            "reaction `{name}` starts after event {id}: an event id is never negative"
        ))),
        Some(Start::After(id)) if id > head => Err(Error::InvalidInput(format!(
            "reaction `{name}` starts after event {id}, past the log's head ({head})"
        ))),
        Some(Start::After(id)) => Ok(id),
        None if first_registration && legacy > 0 => Ok(legacy),
        None if first_registration || head == 0 => Ok(0),
        None => Err(Error::InvalidInput(format!(
            "reaction `{name}` is new and the log already holds events (head {head}): declare where it starts, \
             `.from_beginning()` to replay the history (a projection) or `.from_now()` for new events only \
             (side effects such as e-mails), or `.from_event(id)`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_starts_win_and_are_checked() {
        assert_eq!(
            resolve_start("r", Some(Start::Beginning), 10, 5, false).unwrap(),
            0
        );
        assert_eq!(
            resolve_start("r", Some(Start::Now), 10, 5, false).unwrap(),
            10
        );
        assert_eq!(
            resolve_start("r", Some(Start::After(3)), 10, 0, true).unwrap(),
            3
        );
        assert!(resolve_start("r", Some(Start::After(11)), 10, 0, true).is_err());
        assert!(resolve_start("r", Some(Start::After(-1)), 10, 0, true).is_err());
    }

    #[test]
    fn the_default_is_safe() {
        // A new application: everything from the beginning.
        assert_eq!(resolve_start("r", None, 10, 0, true).unwrap(), 0);
        // An upgraded store: where the one checkpoint was.
        assert_eq!(resolve_start("r", None, 10, 7, true).unwrap(), 7);
        // A reaction added later to an empty log: nothing to decide.
        assert_eq!(resolve_start("r", None, 0, 0, false).unwrap(), 0);
        // Added later to a log with events: say which.
        let e = resolve_start("mailer", None, 10, 0, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mailer") && e.contains("from_beginning") && e.contains("from_now"),
            "{e}"
        );
    }
}
