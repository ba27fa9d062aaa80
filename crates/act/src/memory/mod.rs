//! The in-memory backend for both ports: thread-safe, for tests and for trying
//! act without a server. Nothing survives the process.
//!
//! One mutex guards the log and the queues, so every call is atomic and ids
//! become visible in order (appends assign ids and publish them under the same
//! lock). Events are shared (`Arc`), never copied. Claim walks an ordered index
//! of queues with deliverable work (priority, then oldest pending event), never
//! the log; fetch follows each queue's pending items. Time comes from an
//! injectable [`Clock`], so tests move it with a [`crate::clock::ManualClock`].
//! It enforces the same input limits as every durable backend
//! ([`crate::limits`]), so what passes here passes there.

mod queues;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::fast::RandomState;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::event::{new_correlation_id, Append, Event, Message, Meta};
use crate::query::{Query, StreamFilter};
use crate::queue::{
    Batch, Claim, LeaseRef, Pending, QueueFilter, QueueState, Rejection, Settlement,
};
use crate::store::Wake;
use crate::store::{EventStore, QueueStore};
use crate::subscription::Enqueued;
use crate::subscription::{Correlation, Replay, Retired, Subscription, SubscriptionState};

use queues::{DueKey, Queue, Taken};

/// Both ports in memory. See the module docs.
///
/// ```
/// # use act::{MemoryStore, EventStore, Append, Message};
/// # #[tokio::main] async fn main() -> act::Result<()> {
/// let store = MemoryStore::new();
/// let events = store.append(Append::new("a", vec![Message::new("Hi", serde_json::json!({}))])).await?;
/// assert_eq!(events[0].id, 1);
/// # Ok(()) }
/// ```
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    wake: watch::Sender<Wake>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// The log; event id `n` is at index `n - 1`.
    events: Vec<Arc<Event>>,
    /// Per stream: indexes into `events`, in version order.
    /// (The maps keyed by name use foldhash, randomly seeded as std's
    /// SipHash is: with the state cache's, SipHash was 8 % of the
    /// instructions of a one-event action.)
    streams: HashMap<String, Vec<u32>, RandomState>,
    /// Idempotency key → index range of the first append with it.
    keys: HashMap<String, (usize, usize), RandomState>,
    subscriptions: BTreeMap<String, SubscriptionState>,
    /// (queue, reaction) → replay.
    replays: BTreeMap<(String, String), Replay>,
    queues: HashMap<Arc<str>, Queue, RandomState>,
    /// Queues with pending work that are not blocked, in claim order.
    due: BTreeSet<DueKey>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store on the machine's clock.
    pub fn new() -> Self {
        MemoryStore::with_clock(Arc::new(SystemClock))
    }

    /// An empty store on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            clock,
            wake: watch::Sender::new(Wake::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied call:
        // every call validates first, then mutates without panicking paths.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signals a change to every [`EventStore::wake`] receiver; free when
    /// there is none (an application writing without a broker). Called
    /// after the change was made under the store's lock, and receivers
    /// subscribe before they read the store: one subscribing too late to be
    /// counted here reads the change itself, so none misses it.
    fn notify(&self, change: fn(&mut Wake)) {
        if self.wake.receiver_count() > 0 {
            self.wake.send_modify(change);
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

fn index_after(id: Option<i64>) -> usize {
    // Events with id > `id` start at index `id`.
    id.map_or(0, |a| usize::try_from(a.max(0)).unwrap_or(usize::MAX))
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(&self, append: Append) -> Result<Vec<Arc<Event>>> {
        crate::limits::check_append(&append)?;
        let committed = {
            let mut inner = self.lock();
            let Inner {
                events,
                streams,
                keys,
                ..
            } = &mut *inner;
            if let Some(key) = &append.idempotency_key {
                if let Some(&(start, end)) = keys.get(key) {
                    return Ok(events[start..end].to_vec());
                }
            }
            // One lookup of the stream's index serves the version check and
            // the update (a new stream is inserted once, below).
            let index = streams.get_mut(append.stream.as_str());
            let actual = index
                .as_ref()
                .and_then(|s| s.last())
                .map(|&i| events[i as usize].version);
            if !append.expected.matches(actual) {
                return Err(Error::Concurrency {
                    stream: append.stream,
                    expected: append.expected,
                    actual: actual.into(),
                });
            }
            let start = events.len();
            let mut messages = append.messages;
            let Some(last) = messages.pop() else {
                return Ok(Vec::new());
            };
            if start + messages.len() + 1 > u32::MAX as usize {
                return Err(Error::InvalidInput(
                    "the in-memory store holds at most 4,294,967,295 events".into(),
                ));
            }
            let end = start + messages.len() + 1;
            match index {
                Some(index) => index.extend((start..end).map(|i| i as u32)),
                None => {
                    streams.insert(
                        append.stream.clone(),
                        (start..end).map(|i| i as u32).collect(),
                    );
                }
            }
            let meta = Meta {
                created: self.now(),
                correlation: append.correlation.unwrap_or_else(new_correlation_id),
                causation: append.causation,
                actor: append.actor,
            };
            let first_version = actual.map_or(0, |v| v + 1);
            let mut out = Vec::with_capacity(end - start);
            let mut push = |m: Message, stream: String, meta: Meta| {
                let i = events.len() - start;
                let e = Arc::new(Event {
                    id: events.len() as i64 + 1,
                    stream,
                    version: first_version + i as i64,
                    name: m.name,
                    data: m.data,
                    meta,
                });
                events.push(e.clone());
                out.push(e);
            };
            // Every event owns its stream name and meta: all but the last
            // get copies, the last takes the append's own.
            for m in messages {
                push(m, append.stream.clone(), meta.clone());
            }
            push(last, append.stream, meta);
            if let Some(key) = append.idempotency_key {
                keys.insert(key, (start, end));
            }
            out
        };
        self.notify(Wake::new_events);
        Ok(committed)
    }

    async fn query(&self, q: &Query) -> Result<Vec<Arc<Event>>> {
        let inner = self.lock();
        let limit = q.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let lo = index_after(q.after);
        let hi = q.before.map_or(inner.events.len(), |b| {
            index_after(Some(b.saturating_sub(1))).min(inner.events.len())
        });
        if lo >= hi {
            return Ok(out);
        }
        let mut take = |e: &Arc<Event>| {
            if q.matches(e) {
                out.push(e.clone());
            }
            out.len() >= limit
        };
        match &q.stream {
            Some(StreamFilter::Exact(s)) => {
                let Some(idx) = inner.streams.get(s) else {
                    return Ok(Vec::new());
                };
                let a = idx.partition_point(|&i| (i as usize) < lo);
                let b = idx.partition_point(|&i| (i as usize) < hi);
                let slice = &idx[a..b];
                if q.backward {
                    for &i in slice.iter().rev() {
                        if take(&inner.events[i as usize]) {
                            break;
                        }
                    }
                } else {
                    for &i in slice {
                        if take(&inner.events[i as usize]) {
                            break;
                        }
                    }
                }
            }
            _ => {
                let slice = &inner.events[lo..hi];
                if q.backward {
                    for e in slice.iter().rev() {
                        if take(e) {
                            break;
                        }
                    }
                } else {
                    for e in slice {
                        if take(e) {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn head(&self) -> Result<i64> {
        Ok(self.lock().events.len() as i64)
    }

    fn wake(&self) -> watch::Receiver<Wake> {
        self.wake.subscribe()
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    async fn legacy_checkpoint(&self) -> Result<i64> {
        Ok(0)
    }

    async fn subscribe(&self, subscriptions: &[Subscription]) -> Result<Vec<SubscriptionState>> {
        for s in subscriptions {
            crate::limits::check_name("the reaction name", &s.name)?;
        }
        let now = self.now();
        let mut inner = self.lock();
        for s in subscriptions {
            match inner.subscriptions.get_mut(&s.name) {
                Some(known) if known.retired.is_none() => {
                    known.seen = now;
                    known.events = s.events.clone();
                    known.target = s.target.clone();
                }
                Some(_) => {}
                None => {
                    inner.subscriptions.insert(
                        s.name.clone(),
                        SubscriptionState {
                            name: s.name.clone(),
                            events: s.events.clone(),
                            target: s.target.clone(),
                            start: s.start,
                            checkpoint: s.start,
                            created: now,
                            seen: now,
                            retired: None,
                        },
                    );
                }
            }
        }
        Ok(inner.subscriptions.values().cloned().collect())
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionState>> {
        Ok(self.lock().subscriptions.values().cloned().collect())
    }

    async fn retire(&self, names: &[String]) -> Result<Vec<Retired>> {
        let now = self.now();
        let mut inner = self.lock();
        if let Some(unknown) = names.iter().find(|n| !inner.subscriptions.contains_key(*n)) {
            return Err(Error::UnknownReaction(unknown.clone()));
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let newly = inner
                .subscriptions
                .get(name)
                .is_some_and(|s| s.retired.is_none());
            let (mut dropped, mut queues) = (0, 0);
            if newly {
                if let Some(s) = inner.subscriptions.get_mut(name) {
                    s.retired = Some(now);
                }
                let streams: Vec<Arc<str>> = inner.queues.keys().cloned().collect();
                for stream in streams {
                    let n = inner.update_queue(&stream, |q| q.drop_reaction(name));
                    if n > 0 {
                        dropped += n;
                        queues += 1;
                    }
                }
                let replayed: Vec<String> = inner
                    .replays
                    .keys()
                    .filter(|(_, r)| r == name)
                    .map(|(s, _)| s.clone())
                    .collect();
                for stream in replayed {
                    inner.replays.remove(&(stream.clone(), name.clone()));
                    inner.refresh_replay(&stream);
                }
            }
            out.push(Retired {
                name: name.clone(),
                dropped,
                queues,
                newly,
            });
        }
        drop(inner);
        self.notify(Wake::new_events);
        Ok(out)
    }

    async fn enqueue(&self, step: &Correlation) -> Result<Enqueued> {
        if step.to < step.from {
            return Err(Error::InvalidInput(format!(
                "a correlation step cannot move backwards (from {} to {})",
                step.from, step.to
            )));
        }
        for w in &step.work {
            crate::limits::check_name("the queue name", &w.stream)?;
        }
        let mut added = false;
        let after = {
            let mut inner = self.lock();
            let head = inner.events.len() as i64;
            if let Some(w) = step.work.iter().find(|w| w.event < 1 || w.event > head) {
                return Err(Error::InvalidInput(format!(
                    "work for `{}` names event {}, which is not in the log (head {head})",
                    w.stream, w.event
                )));
            }
            // Which reactions this step moves: those still at `from`.
            let mut after = Vec::with_capacity(step.reactions.len());
            let mut moved: Vec<&str> = Vec::new();
            for r in &step.reactions {
                let at = match &step.replay {
                    None => inner
                        .subscriptions
                        .get(r)
                        .filter(|s| s.retired.is_none())
                        .map(|s| s.checkpoint),
                    Some(q) => inner
                        .replays
                        .get(&(q.clone(), r.clone()))
                        .map(|p| p.position),
                };
                if at == Some(step.from) {
                    moved.push(r);
                    after.push(Some(step.to));
                } else {
                    after.push(at);
                }
            }
            let flags: Vec<bool> = step
                .reactions
                .iter()
                .map(|r| moved.contains(&r.as_str()))
                .collect();
            for w in &step.work {
                if !moved.contains(&w.reaction.as_str())
                    || step.replay.as_ref().is_some_and(|q| *q != w.stream)
                {
                    continue;
                }
                let stream: Arc<str> = Arc::from(w.stream.as_str());
                let reaction: Arc<str> = Arc::from(w.reaction.as_str());
                added |= inner.update_queue(&stream, |q| q.enqueue(w.event, &reaction, w.priority));
            }
            for r in moved {
                match &step.replay {
                    None => {
                        if let Some(s) = inner.subscriptions.get_mut(r) {
                            s.checkpoint = step.to;
                        }
                    }
                    Some(q) => {
                        let key = (q.clone(), r.to_string());
                        let done = match inner.replays.get_mut(&key) {
                            Some(p) => {
                                p.position = step.to;
                                p.position >= p.until
                            }
                            None => false,
                        };
                        if done {
                            inner.replays.remove(&key);
                        }
                        inner.refresh_replay(q);
                    }
                }
            }
            Enqueued {
                positions: after,
                moved: flags,
            }
        };
        if added || step.replay.is_some() {
            self.notify(Wake::new_work);
        }
        Ok(after)
    }

    async fn replays(&self) -> Result<Vec<Replay>> {
        Ok(self.lock().replays.values().cloned().collect())
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<Batch>> {
        let now = self.now();
        let expires = crate::clock::add(now, claim.lease);
        let per_queue = claim.events.max(1);
        let mut inner = self.lock();
        let mut out = Vec::new();
        while out.len() < claim.queues {
            let picked: Vec<Arc<str>> = inner
                .due
                .iter()
                .filter(|k| {
                    inner
                        .queues
                        .get(&k.stream)
                        .is_some_and(|q| q.claimable(now, &claim.reactions))
                })
                .take(claim.queues - out.len())
                .map(|k| k.stream.clone())
                .collect();
            if picked.is_empty() {
                break;
            }
            for stream in picked {
                let suspect = inner.update_queue(&stream, Queue::lapse);
                let limit = if suspect { 1 } else { per_queue };
                let pending = inner.queues[&stream].pending(limit);
                let (taken, n) = inner.update_queue(&stream, |q| {
                    q.take(&claim.owner, expires, &claim.reactions, &pending)
                });
                if let Taken::Leased(lease) = taken {
                    let events = pending[..n]
                        .iter()
                        .filter_map(|(id, reactions)| {
                            // Enqueue only accepts events of the log.
                            let event = inner.events.get(usize::try_from(id - 1).ok()?)?;
                            Some(Pending {
                                event: event.clone(),
                                reactions: reactions.iter().map(|r| r.to_string()).collect(),
                            })
                        })
                        .collect();
                    out.push(Batch { lease, events });
                }
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<Result<(), Rejection>>> {
        let now = self.now();
        let mut results: Vec<Result<(), Rejection>> = vec![Ok(()); settlements.len()];
        let mut wake = false;
        {
            let mut inner = self.lock();
            // Blocks first, then acks and retries.
            let order = crate::queue::settle_order(settlements);
            for i in order {
                let s = &settlements[i];
                let stream: Arc<str> = Arc::from(s.lease.stream.as_str());
                results[i] = match inner.queues.get(&stream) {
                    None => Err(Rejection::Unknown(s.lease.stream.clone())),
                    Some(q) => q.check(&s.lease, now, Some(s.from)),
                };
                if results[i].is_ok() {
                    // Any applied settlement frees a lease: a broker waiting
                    // for it (settle) should look again.
                    inner.update_queue(&stream, |q| q.settle(s, now));
                    wake = true;
                }
            }
        }
        if wake {
            self.notify(Wake::new_work);
        }
        Ok(results)
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        let now = self.now();
        let expires = crate::clock::add(now, lease);
        let mut inner = self.lock();
        Ok(leases
            .iter()
            .map(|l| {
                let q = inner
                    .queues
                    .get_mut(l.stream.as_str())
                    .ok_or_else(|| Rejection::Unknown(l.stream.clone()))?;
                q.check(l, now, None)?;
                q.renew(expires);
                Ok(expires)
            })
            .collect())
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<Vec<Result<(), Rejection>>> {
        let results = {
            let mut inner = self.lock();
            leases
                .iter()
                .map(|l| {
                    let q = inner
                        .queues
                        .get_mut(l.stream.as_str())
                        .ok_or_else(|| Rejection::Unknown(l.stream.clone()))?;
                    q.release(l)
                })
                .collect::<Vec<_>>()
        };
        if results.iter().any(|r| r.is_ok()) {
            self.notify(Wake::new_work);
        }
        Ok(results)
    }

    async fn unblock(&self, streams: &[String]) -> Result<Vec<String>> {
        let done: Vec<String> = {
            let mut inner = self.lock();
            let mut done: Vec<String> = Vec::new();
            for s in streams {
                let key: Arc<str> = Arc::from(s.as_str());
                if !done.contains(s)
                    && inner.queues.contains_key(&key)
                    && inner.update_queue(&key, Queue::unblock)
                {
                    done.push(s.clone());
                }
            }
            done
        };
        if !done.is_empty() {
            self.notify(Wake::new_work);
        }
        Ok(done)
    }

    async fn reset(&self, stream: &str, position: i64) -> Result<QueueState> {
        crate::limits::check_name("the queue name", stream)?;
        if position < 0 {
            return Err(Error::InvalidInput(format!(
                "cannot reset `{stream}` to a negative position ({position})"
            )));
        }
        let state = {
            let mut inner = self.lock();
            let head = inner.events.len() as i64;
            if position > head {
                return Err(Error::InvalidInput(format!(
                    "cannot reset `{stream}` to {position}: the log's head is {head}; events past it do not exist yet"
                )));
            }
            let key: Arc<str> = Arc::from(stream);
            let candidates: Vec<(String, i64, i64)> = inner
                .subscriptions
                .values()
                .filter(|s| s.retired.is_none() && s.target.as_deref().is_none_or(|t| t == stream))
                .map(|s| (s.name.clone(), s.start, s.checkpoint))
                .collect();
            if !inner.queues.contains_key(&key) && candidates.is_empty() {
                return Err(Error::UnknownQueue(stream.to_string()));
            }
            inner.replays.retain(|(q, _), _| q != stream);
            for (reaction, start, checkpoint) in candidates {
                let from = position.max(start);
                if checkpoint > from {
                    inner.replays.insert(
                        (stream.to_string(), reaction.clone()),
                        Replay {
                            stream: stream.to_string(),
                            reaction,
                            position: from,
                            until: checkpoint,
                        },
                    );
                }
            }
            let horizon = inner.replay_horizon(stream);
            inner.update_queue(&key, |q| q.reset(position, horizon));
            inner.queues[&key].state()
        };
        self.notify(Wake::new_events);
        Ok(state)
    }

    async fn queues(&self, filter: &QueueFilter) -> Result<Vec<QueueState>> {
        let inner = self.lock();
        let mut rows: Vec<QueueState> = match &filter.stream {
            Some(s) => inner
                .queues
                .get(s.as_str())
                .map(Queue::state)
                .into_iter()
                .collect(),
            None => inner.queues.values().map(Queue::state).collect(),
        };
        rows.retain(|r| {
            (!filter.blocked || r.blocked)
                && (!filter.pending || r.lag > 0)
                && filter
                    .after
                    .as_ref()
                    .is_none_or(|a| r.stream.as_bytes() > a.as_bytes())
        });
        rows.sort_by(|a, b| a.stream.as_bytes().cmp(b.stream.as_bytes()));
        if let Some(n) = filter.limit {
            rows.truncate(n);
        }
        Ok(rows)
    }

    async fn pending_by_reaction(&self) -> Result<Vec<(String, u64)>> {
        let inner = self.lock();
        let mut counts = std::collections::BTreeMap::new();
        for q in inner.queues.values() {
            q.count_items(&mut counts);
        }
        Ok(counts
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect())
    }

    async fn next_due(&self, reactions: &[String]) -> Result<Option<Duration>> {
        let now = self.now();
        let inner = self.lock();
        Ok(inner
            .due
            .iter()
            .filter_map(|k| inner.queues.get(&k.stream))
            .filter_map(|q| q.due_at(now, reactions))
            .map(|t| crate::clock::until(now, t))
            .min())
    }
}

impl Inner {
    /// Applies `f` to a queue (created empty on first sight), keeping the due
    /// index in step with the queue's state.
    fn update_queue<R>(&mut self, stream: &Arc<str>, f: impl FnOnce(&mut Queue) -> R) -> R {
        let q = self
            .queues
            .entry(stream.clone())
            .or_insert_with(|| Queue::new(stream.clone()));
        let before = q.due_key();
        let r = f(q);
        let after = q.due_key();
        if before != after {
            if let Some(k) = before {
                self.due.remove(&k);
            }
            if let Some(k) = after {
                self.due.insert(k);
            }
        }
        r
    }

    /// The lowest position of the replays of `stream`, if any.
    fn replay_horizon(&self, stream: &str) -> Option<i64> {
        self.replays
            .values()
            .filter(|p| p.stream == stream)
            .map(|p| p.position)
            .min()
    }

    fn refresh_replay(&mut self, stream: &str) {
        let horizon = self.replay_horizon(stream);
        let key: Arc<str> = Arc::from(stream);
        if self.queues.contains_key(&key) {
            self.update_queue(&key, |q| q.set_replay(horizon));
        }
    }
}
