//! One queue's state in the in-memory backend, and the rules every fenced write
//! checks. Pure data: no locks, no clock, so each rule reads on its own.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::queue::{
    lapse_error, retries_after_deferral, retries_after_failure, Lease, LeaseRef, Outcome,
    QueueState, Rejection, Settlement,
};

/// Claim order of a queue with deliverable work: priority (high first), then
/// the oldest pending event, then the name (for a total order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DueKey {
    priority: Reverse<i32>,
    next: i64,
    pub(super) stream: Arc<str>,
}

/// What a claim found at a queue.
pub(super) enum Taken {
    /// Leased, with the first `n` pending events.
    Leased(Lease),
    /// Its first pending event needs a reaction the claimer lacks.
    Waiting,
}

#[derive(Debug)]
pub(super) struct Queue {
    stream: Arc<str>,
    /// Pending items: (event, reaction) → enqueue sequence number.
    items: BTreeMap<(i64, Arc<str>), i64>,
    /// Items ever enqueued (the last sequence number handed out).
    enqueued: i64,
    head: i64,
    position: i64,
    /// Items for events at or below it are dropped (set by reset).
    floor: i64,
    priority: i32,
    retries: u32,
    lapses: u32,
    retry_at: Option<DateTime<Utc>>,
    blocked: bool,
    error: Option<String>,
    token: i64,
    lease: Option<(String, DateTime<Utc>)>,
    waiting: Option<Arc<str>>,
    /// Replay horizon: nothing past it is delivered.
    replay: Option<i64>,
    /// The last event handed out by the latest claim.
    leased_to: i64,
    /// While an ack has not passed it: the end of a batch whose lease
    /// lapsed; the queue goes one event at a time until then.
    suspect_to: i64,
}

impl Queue {
    pub(super) fn new(stream: Arc<str>) -> Self {
        Queue {
            stream,
            items: BTreeMap::new(),
            enqueued: 0,
            head: 0,
            position: 0,
            floor: 0,
            priority: 0,
            retries: 0,
            lapses: 0,
            retry_at: None,
            blocked: false,
            error: None,
            token: 0,
            lease: None,
            waiting: None,
            replay: None,
            leased_to: 0,
            suspect_to: 0,
        }
    }

    fn next(&self) -> Option<i64> {
        self.items.keys().next().map(|(e, _)| *e)
    }

    /// The first pending event, if it may be delivered (not past a replay).
    fn deliverable(&self) -> Option<i64> {
        self.next()
            .filter(|&n| self.replay.is_none_or(|horizon| n <= horizon))
    }

    pub(super) fn due_key(&self) -> Option<DueKey> {
        if self.blocked {
            return None;
        }
        self.deliverable().map(|next| DueKey {
            priority: Reverse(self.priority),
            next,
            stream: self.stream.clone(),
        })
    }

    fn live_lease(&self, now: DateTime<Utc>) -> bool {
        self.lease.as_ref().is_some_and(|(_, exp)| *exp > now)
    }

    /// Claimable now by a broker running `reactions`.
    pub(super) fn claimable(&self, now: DateTime<Utc>, reactions: &[String]) -> bool {
        !self.blocked
            && self.deliverable().is_some()
            && !self.live_lease(now)
            && self.retry_at.is_none_or(|t| t <= now)
            && self.waits_for_none_of(reactions)
    }

    fn waits_for_none_of(&self, reactions: &[String]) -> bool {
        self.waiting
            .as_ref()
            .is_none_or(|w| reactions.iter().any(|r| r.as_str() == &**w))
    }

    /// When this queue can next be claimed by a broker running `reactions`
    /// (`None`: not by it, or nothing deliverable).
    pub(super) fn due_at(&self, now: DateTime<Utc>, reactions: &[String]) -> Option<DateTime<Utc>> {
        if self.blocked || self.deliverable().is_none() || !self.waits_for_none_of(reactions) {
            return None;
        }
        let mut t = now;
        if let Some(r) = self.retry_at {
            t = t.max(r);
        }
        if let Some((_, exp)) = &self.lease {
            t = t.max(*exp);
        }
        Some(t)
    }

    /// Records an item unless it is below the floor or already pending.
    /// Returns true when it was added.
    pub(super) fn enqueue(&mut self, event: i64, reaction: &Arc<str>, priority: i32) -> bool {
        if event <= self.floor {
            return false;
        }
        let key = (event, reaction.clone());
        if self.items.contains_key(&key) {
            return false;
        }
        if self.next().is_some_and(|n| event < n) {
            // The first pending event changed: look again at who can run it.
            self.waiting = None;
        }
        // The highest priority ever enqueued, negative ones included.
        self.priority = if self.enqueued == 0 {
            priority
        } else {
            self.priority.max(priority)
        };
        self.enqueued += 1;
        self.items.insert(key, self.enqueued);
        self.head = self.head.max(event);
        true
    }

    pub(super) fn set_replay(&mut self, horizon: Option<i64>) {
        self.replay = horizon;
    }

    /// Counts a lapsed lease (one that ended without a settlement) as a
    /// failed attempt, before a claim looks at the queue; true when the queue
    /// now walks one event at a time.
    pub(super) fn lapse(&mut self) -> bool {
        if let Some((previous, _)) = self.lease.take() {
            // Claimable means the lease expired: it ended without a settlement.
            self.retries = self.retries.saturating_add(1);
            self.lapses = self.lapses.saturating_add(1);
            self.error = Some(lapse_error(&previous));
            self.suspect_to = self.suspect_to.max(self.leased_to);
        }
        self.suspect()
    }

    fn suspect(&self) -> bool {
        self.suspect_to > 0 && self.next().is_some_and(|n| n <= self.suspect_to)
    }

    /// Up to `limit` pending events (≤ the replay horizon) with their
    /// reactions, in id order.
    pub(super) fn pending(&self, limit: usize) -> Vec<(i64, Vec<Arc<str>>)> {
        let mut out: Vec<(i64, Vec<Arc<str>>)> = Vec::new();
        for (event, reaction) in self.items.keys() {
            if self.replay.is_some_and(|h| *event > h) {
                break;
            }
            if let Some((e, rs)) = out.last_mut() {
                if e == event {
                    rs.push(reaction.clone());
                    continue;
                }
            }
            if out.len() == limit {
                break;
            }
            out.push((*event, vec![reaction.clone()]));
        }
        out
    }

    /// A claim of this (claimable, lapse counted) queue by `owner` running
    /// `reactions`: leases the queue unless its first pending event needs a
    /// reaction the owner lacks. Returns the lease and how many of `pending`
    /// events it covers.
    pub(super) fn take(
        &mut self,
        owner: &str,
        expires: DateTime<Utc>,
        reactions: &[String],
        pending: &[(i64, Vec<Arc<str>>)],
    ) -> (Taken, usize) {
        let runnable = |rs: &Vec<Arc<str>>| {
            rs.iter()
                .all(|r| reactions.iter().any(|m| m.as_str() == &**r))
        };
        let cut = pending
            .iter()
            .position(|(_, rs)| !runnable(rs))
            .unwrap_or(pending.len());
        if cut == 0 {
            let missing = pending[0]
                .1
                .iter()
                .find(|r| !reactions.iter().any(|m| m.as_str() == &***r))
                .cloned();
            self.waiting = missing;
            return (Taken::Waiting, 0);
        }
        self.token += 1;
        self.waiting = None;
        self.lease = Some((owner.to_string(), expires));
        self.leased_to = pending[cut - 1].0;
        let lease = Lease {
            stream: self.stream.to_string(),
            owner: owner.to_string(),
            token: self.token,
            expires,
            position: self.position,
            retries: self.retries,
            lapses: self.lapses,
            mark: self.enqueued,
            suspect: self.suspect(),
        };
        (Taken::Leased(lease), cut)
    }

    /// The fencing rule: current token, live lease, and (for settlements) the
    /// position the lease read.
    pub(super) fn check(
        &self,
        lease: &LeaseRef,
        now: DateTime<Utc>,
        from: Option<i64>,
    ) -> Result<(), Rejection> {
        if lease.token != self.token {
            return Err(Rejection::Stale {
                stream: lease.stream.clone(),
                token: lease.token,
                current: self.token,
            });
        }
        if !self.live_lease(now) {
            return Err(Rejection::Expired {
                stream: lease.stream.clone(),
                token: lease.token,
            });
        }
        if let Some(from) = from {
            if from != self.position {
                return Err(Rejection::Moved {
                    stream: lease.stream.clone(),
                    expected: from,
                    actual: self.position,
                });
            }
        }
        Ok(())
    }

    /// Applies a checked settlement.
    pub(super) fn settle(&mut self, s: &Settlement, now: DateTime<Utc>) {
        self.lease = None;
        self.waiting = None;
        if let Some(acked) = s.acked {
            // Items are ordered by event: split off those past `acked`
            // instead of looking at every item (a settle of a queue with a
            // long backlog walked the whole backlog, so draining it was
            // quadratic), then keep those of the acked ones enqueued after
            // the lease's mark.
            let done = match acked.checked_add(1) {
                Some(past) => {
                    let rest = self.items.split_off(&(past, Arc::from("")));
                    std::mem::replace(&mut self.items, rest)
                }
                None => std::mem::take(&mut self.items),
            };
            self.items
                .extend(done.into_iter().filter(|(_, seq)| *seq > s.mark));
            self.position = self.position.max(acked);
            // Past the end of a lapsed batch: whole batches again.
            if acked >= self.suspect_to {
                self.suspect_to = 0;
            }
        }
        let progress = s.acked.is_some();
        match &s.outcome {
            Outcome::Ack => {
                self.retries = 0;
                self.lapses = 0;
                self.retry_at = None;
                self.error = None;
            }
            Outcome::Retry { delay, error } => {
                self.failed(progress);
                self.retry_at = Some(crate::clock::add(now, *delay));
                self.error = Some(error.clone());
            }
            Outcome::Block { error } => {
                self.failed(progress);
                self.retry_at = None;
                self.blocked = true;
                self.error = Some(error.clone());
            }
            Outcome::Defer { delay } => {
                self.retries = retries_after_deferral(progress, self.retries);
                if progress {
                    self.lapses = 0;
                }
                self.retry_at = Some(crate::clock::add(now, *delay));
                self.error = None;
            }
        }
    }

    fn failed(&mut self, progress: bool) {
        self.retries = retries_after_failure(progress, self.retries);
        if progress {
            self.lapses = 0;
        }
    }

    pub(super) fn renew(&mut self, expires: DateTime<Utc>) {
        if let Some((_, exp)) = &mut self.lease {
            *exp = expires;
        }
    }

    pub(super) fn release(&mut self, lease: &LeaseRef) -> Result<(), Rejection> {
        if lease.token != self.token {
            return Err(Rejection::Stale {
                stream: lease.stream.clone(),
                token: lease.token,
                current: self.token,
            });
        }
        self.lease = None;
        Ok(())
    }

    /// True when the queue was blocked.
    pub(super) fn unblock(&mut self) -> bool {
        if !self.blocked {
            return false;
        }
        self.blocked = false;
        self.clear();
        true
    }

    fn clear(&mut self) {
        self.retries = 0;
        self.lapses = 0;
        self.retry_at = None;
        self.error = None;
        self.waiting = None;
        self.token += 1;
        self.lease = None;
    }

    /// Drops every pending item and moves the queue to `position`.
    pub(super) fn reset(&mut self, position: i64, replay: Option<i64>) {
        self.items.clear();
        self.position = position;
        self.floor = position;
        self.suspect_to = 0;
        self.blocked = false;
        self.replay = replay;
        self.clear();
    }

    /// Adds this queue's pending items to `counts`, per reaction.
    pub(super) fn count_items<'a>(&'a self, counts: &mut std::collections::BTreeMap<&'a str, u64>) {
        for (_, r) in self.items.keys() {
            *counts.entry(&**r).or_default() += 1;
        }
    }

    /// Drops the items of a retired reaction; returns how many.
    pub(super) fn drop_reaction(&mut self, reaction: &str) -> u64 {
        let before = self.items.len();
        self.items.retain(|(_, r), _| &**r != reaction);
        if self.waiting.as_deref() == Some(reaction) {
            self.waiting = None;
        }
        (before - self.items.len()) as u64
    }

    pub(super) fn state(&self) -> QueueState {
        let mut lag = 0u64;
        let mut last = None;
        for (event, _) in self.items.keys() {
            if last != Some(*event) {
                lag += 1;
                last = Some(*event);
            }
        }
        QueueState {
            stream: self.stream.to_string(),
            position: self.position,
            head: self.head,
            next: self.next(),
            lag,
            priority: self.priority,
            retries: self.retries,
            retry_at: self.retry_at,
            blocked: self.blocked,
            error: self.error.clone(),
            token: self.token,
            lease_owner: self.lease.as_ref().map(|(o, _)| o.clone()),
            lease_expires: self.lease.as_ref().map(|(_, e)| *e),
            waiting: self.waiting.as_ref().map(|w| w.to_string()),
            replay: self.replay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(q: &Queue) -> Vec<(i64, String)> {
        q.items.keys().map(|(e, r)| (*e, r.to_string())).collect()
    }

    /// A queue with items at events 1..=4 for `r`, leased (mark 4), then
    /// one more item at event 2 for `s` enqueued after the claim.
    fn leased(now: DateTime<Utc>) -> (Queue, Lease) {
        let mut q = Queue::new(Arc::from("q"));
        let r: Arc<str> = Arc::from("r");
        for e in 1..=4 {
            assert!(q.enqueue(e, &r, 0));
        }
        let pending = q.pending(10);
        let expires = now + chrono::Duration::seconds(30);
        let Taken::Leased(lease) = q.take("b", expires, &["r".into(), "s".into()], &pending).0
        else {
            panic!("leased");
        };
        assert!(q.enqueue(2, &Arc::from("s"), 0));
        (q, lease)
    }

    #[test]
    fn an_ack_removes_the_acked_items_up_to_the_mark_and_keeps_later_ones() {
        let now = Utc::now();
        let (mut q, lease) = leased(now);
        q.settle(&Settlement::ack(&lease, 2), now);
        assert_eq!(
            keys(&q),
            vec![(2, "s".into()), (3, "r".into()), (4, "r".into())],
            "the item enqueued after the claim stays, as do events past the ack"
        );
        assert_eq!(q.next(), Some(2));
    }

    #[test]
    fn an_ack_of_the_last_possible_event_removes_everything_up_to_the_mark() {
        let now = Utc::now();
        let (mut q, lease) = leased(now);
        q.settle(&Settlement::ack(&lease, i64::MAX), now);
        assert_eq!(keys(&q), vec![(2, "s".into())]);
    }
}
