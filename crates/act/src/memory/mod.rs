//! The in-memory backend for both ports: thread-safe, for tests and for trying
//! act without a server. Nothing survives the process.
//!
//! One mutex guards the log and the queues, so every call is atomic and ids
//! become visible in order (appends assign ids and publish them under the same
//! lock). Events are shared (`Arc`), never copied. Claim walks an ordered index
//! of queues with pending work (priority, then oldest pending event), never the
//! log; fetch follows each queue's work index. Time comes from an injectable
//! [`Clock`], so tests move it with a [`crate::clock::ManualClock`].

mod queues;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::event::{Append, Event, Meta};
use crate::query::{Query, StreamFilter};
use crate::queue::{Batch, Claim, LeaseRef, QueueFilter, QueueState, Rejection, Settlement, Work};
use crate::store::{EventStore, QueueStore};

use queues::{DueKey, Queue};

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
    wake: watch::Sender<u64>,
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
    streams: HashMap<String, Vec<u32>>,
    /// Idempotency key → index range of the first append with it.
    keys: HashMap<String, (usize, usize)>,
    checkpoint: i64,
    queues: HashMap<Arc<str>, Queue>,
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
            wake: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied call:
        // every call validates first, then mutates without panicking paths.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
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
        let committed = {
            let mut inner = self.lock();
            if let Some(key) = &append.idempotency_key {
                if let Some(&(start, end)) = inner.keys.get(key) {
                    return Ok(inner.events[start..end].to_vec());
                }
            }
            let actual = inner
                .streams
                .get(&append.stream)
                .and_then(|s| s.last())
                .map(|&i| inner.events[i as usize].version);
            if !append.expected.matches(actual) {
                return Err(Error::Concurrency {
                    stream: append.stream,
                    expected: append.expected,
                    actual: actual.into(),
                });
            }
            if append.messages.is_empty() {
                return Ok(Vec::new());
            }
            let start = inner.events.len();
            if start + append.messages.len() > u32::MAX as usize {
                return Err(Error::InvalidInput(
                    "the in-memory store holds at most 4,294,967,295 events".into(),
                ));
            }
            let meta = Meta {
                created: self.now(),
                correlation: append.correlation_or_new(),
                causation: append.causation.clone(),
                actor: append.actor.clone(),
            };
            let first_version = actual.map_or(0, |v| v + 1);
            let mut out = Vec::with_capacity(append.messages.len());
            for (i, m) in append.messages.into_iter().enumerate() {
                let idx = start + i;
                let e = Arc::new(Event {
                    id: idx as i64 + 1,
                    stream: append.stream.clone(),
                    version: first_version + i as i64,
                    name: m.name,
                    data: m.data,
                    meta: meta.clone(),
                });
                inner.events.push(e.clone());
                out.push(e);
            }
            let end = inner.events.len();
            inner
                .streams
                .entry(append.stream)
                .or_default()
                .extend((start..end).map(|i| i as u32));
            if let Some(key) = append.idempotency_key {
                inner.keys.insert(key, (start, end));
            }
            out
        };
        self.notify();
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
            index_after(Some(b - 1)).min(inner.events.len())
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

    fn wake(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    async fn checkpoint(&self) -> Result<i64> {
        Ok(self.lock().checkpoint)
    }

    async fn enqueue(&self, work: &[Work], from: i64, to: i64) -> Result<i64> {
        if to < from {
            return Err(Error::InvalidInput(format!(
                "checkpoint cannot move backwards (from {from} to {to})"
            )));
        }
        let cp = {
            let mut inner = self.lock();
            if inner.checkpoint != from {
                return Ok(inner.checkpoint);
            }
            for w in work {
                let stream: Arc<str> = Arc::from(w.stream.as_str());
                inner.update_queue(&stream, |q| q.enqueue(w.event, w.priority));
            }
            inner.checkpoint = to;
            to
        };
        if !work.is_empty() {
            self.notify();
        }
        Ok(cp)
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<Batch>> {
        let now = self.now();
        let expires = crate::clock::add(now, claim.lease);
        let mut inner = self.lock();
        let picked: Vec<Arc<str>> = inner
            .due
            .iter()
            .filter(|k| {
                inner
                    .queues
                    .get(&k.stream)
                    .is_some_and(|q| q.claimable(now))
            })
            .take(claim.queues)
            .map(|k| k.stream.clone())
            .collect();
        let mut out = Vec::with_capacity(picked.len());
        for stream in picked {
            let lease = inner.update_queue(&stream, |q| q.lease(&claim.owner, expires));
            let events = inner.queues[&stream]
                .pending(claim.events)
                .map(|id| inner.events[(id - 1) as usize].clone())
                .collect();
            out.push(Batch { lease, events });
        }
        Ok(out)
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<Result<(), Rejection>>> {
        if let Some(s) = settlements.iter().find(|s| s.to < s.from) {
            return Err(Error::InvalidInput(format!(
                "settlement of `{}` moves its position backwards ({} to {})",
                s.lease.stream, s.from, s.to
            )));
        }
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
                    // for it (catch_up) should look again.
                    inner.update_queue(&stream, |q| q.settle(s, now));
                    wake = true;
                }
            }
        }
        if wake {
            self.notify();
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
            self.notify();
        }
        Ok(results)
    }

    async fn unblock(&self, streams: &[String]) -> Result<Vec<String>> {
        let done: Vec<String> = {
            let mut inner = self.lock();
            streams
                .iter()
                .filter(|s| {
                    let key: Arc<str> = Arc::from(s.as_str());
                    inner.queues.contains_key(&key) && inner.update_queue(&key, Queue::unblock)
                })
                .cloned()
                .collect()
        };
        if !done.is_empty() {
            self.notify();
        }
        Ok(done)
    }

    async fn reset(&self, stream: &str, position: i64) -> Result<QueueState> {
        if position < 0 {
            return Err(Error::InvalidInput(format!(
                "cannot reset `{stream}` to a negative position ({position})"
            )));
        }
        let now = self.now();
        let state = {
            let mut inner = self.lock();
            let key: Arc<str> = Arc::from(stream);
            if !inner.queues.contains_key(&key) {
                return Err(Error::UnknownQueue(stream.to_string()));
            }
            inner.update_queue(&key, |q| q.reset(position));
            inner.queues[&key].state(now)
        };
        self.notify();
        Ok(state)
    }

    async fn queues(&self, filter: &QueueFilter) -> Result<Vec<QueueState>> {
        let now = self.now();
        let inner = self.lock();
        let mut rows: Vec<QueueState> = match &filter.stream {
            Some(s) => inner
                .queues
                .get(s.as_str())
                .map(|q| q.state(now))
                .into_iter()
                .collect(),
            None => inner.queues.values().map(|q| q.state(now)).collect(),
        };
        rows.retain(|r| (!filter.blocked || r.blocked) && (!filter.pending || r.lag > 0));
        rows.sort_by(|a, b| a.stream.cmp(&b.stream));
        if let Some(n) = filter.limit {
            rows.truncate(n);
        }
        Ok(rows)
    }

    async fn next_due(&self) -> Result<Option<Duration>> {
        let now = self.now();
        let inner = self.lock();
        Ok(inner
            .due
            .iter()
            .filter_map(|k| inner.queues.get(&k.stream))
            .map(|q| crate::clock::until(now, q.due_at(now)))
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
}
