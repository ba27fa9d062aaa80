//! One queue's state in the in-memory backend, and the rules every fenced write
//! checks. Pure data: no locks, no clock, so each rule reads on its own.

use std::cmp::Reverse;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::queue::{
    retries_after_failure, Lease, LeaseRef, Outcome, QueueState, Rejection, Settlement,
};

/// Claim order of a queue with pending work: priority (high first), then the
/// oldest pending event, then the name (for a total order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DueKey {
    priority: Reverse<i32>,
    next: i64,
    pub(super) stream: Arc<str>,
}

#[derive(Debug)]
pub(super) struct Queue {
    stream: Arc<str>,
    /// Event ids enqueued for this queue, ascending.
    work: Vec<i64>,
    position: i64,
    priority: i32,
    retries: u32,
    retry_at: Option<DateTime<Utc>>,
    blocked: bool,
    error: Option<String>,
    token: i64,
    lease: Option<(String, DateTime<Utc>)>,
}

impl Queue {
    pub(super) fn new(stream: Arc<str>) -> Self {
        Queue {
            stream,
            work: Vec::new(),
            position: 0,
            priority: 0,
            retries: 0,
            retry_at: None,
            blocked: false,
            error: None,
            token: 0,
            lease: None,
        }
    }

    /// Index in `work` of the first pending event.
    fn first_pending(&self) -> usize {
        self.work.partition_point(|&id| id <= self.position)
    }

    fn next(&self) -> Option<i64> {
        self.work.get(self.first_pending()).copied()
    }

    pub(super) fn due_key(&self) -> Option<DueKey> {
        if self.blocked {
            return None;
        }
        self.next().map(|next| DueKey {
            priority: Reverse(self.priority),
            next,
            stream: self.stream.clone(),
        })
    }

    fn live_lease(&self, now: DateTime<Utc>) -> bool {
        self.lease.as_ref().is_some_and(|(_, exp)| *exp > now)
    }

    pub(super) fn claimable(&self, now: DateTime<Utc>) -> bool {
        !self.blocked
            && self.next().is_some()
            && !self.live_lease(now)
            && self.retry_at.is_none_or(|t| t <= now)
    }

    /// When this pending queue can next be claimed.
    pub(super) fn due_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut t = now;
        if let Some(r) = self.retry_at {
            t = t.max(r);
        }
        if let Some((_, exp)) = &self.lease {
            t = t.max(*exp);
        }
        t
    }

    pub(super) fn enqueue(&mut self, event: i64, priority: i32) {
        self.priority = self.priority.max(priority);
        match self.work.last() {
            Some(&last) if event <= last => {
                if let Err(at) = self.work.binary_search(&event) {
                    self.work.insert(at, event);
                }
            }
            _ => self.work.push(event),
        }
    }

    pub(super) fn pending(&self, limit: usize) -> impl Iterator<Item = i64> + '_ {
        self.work[self.first_pending()..]
            .iter()
            .copied()
            .take(limit)
    }

    pub(super) fn lease(&mut self, owner: &str, expires: DateTime<Utc>) -> Lease {
        self.token += 1;
        self.lease = Some((owner.to_string(), expires));
        Lease {
            stream: self.stream.to_string(),
            owner: owner.to_string(),
            token: self.token,
            expires,
            position: self.position,
            retries: self.retries,
        }
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

    /// Applies a checked settlement; true when the queue has due work left.
    pub(super) fn settle(&mut self, s: &Settlement, now: DateTime<Utc>) -> bool {
        self.lease = None;
        match &s.outcome {
            Outcome::Ack => {
                self.position = s.to;
                self.retries = 0;
                self.retry_at = None;
                self.error = None;
            }
            Outcome::Retry { delay, error } => {
                self.retries = retries_after_failure(s.from, s.to, self.retries);
                self.position = s.to;
                self.retry_at = Some(crate::clock::add(now, *delay));
                self.error = Some(error.clone());
            }
            Outcome::Block { error } => {
                self.retries = retries_after_failure(s.from, s.to, self.retries);
                self.position = s.to;
                self.retry_at = None;
                self.blocked = true;
                self.error = Some(error.clone());
            }
        }
        self.claimable(now)
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
        self.retries = 0;
        self.retry_at = None;
        self.error = None;
        self.token += 1;
        self.lease = None;
        true
    }

    pub(super) fn reset(&mut self, position: i64) {
        self.position = position;
        self.blocked = false;
        self.retries = 0;
        self.retry_at = None;
        self.error = None;
        self.token += 1;
        self.lease = None;
    }

    pub(super) fn state(&self, _now: DateTime<Utc>) -> QueueState {
        let first = self.first_pending();
        QueueState {
            stream: self.stream.to_string(),
            position: self.position,
            head: self.work.last().copied().unwrap_or(0),
            next: self.work.get(first).copied(),
            lag: (self.work.len() - first) as u64,
            priority: self.priority,
            retries: self.retries,
            retry_at: self.retry_at,
            blocked: self.blocked,
            error: self.error.clone(),
            token: self.token,
            lease_owner: self.lease.as_ref().map(|(o, _)| o.clone()),
            lease_expires: self.lease.as_ref().map(|(_, e)| *e),
        }
    }
}
