//! A store for these tests: the memory store behind a wrapper that can make
//! one event read back undecodable (what a durable backend returns for a
//! row it cannot decode), counts the log reads and can make them take a turn
//! of the runtime, as every read over a network does.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use act::{
    Append, Batch, Claim, Correlation, Event, EventStore, LeaseRef, MemoryStore, Query,
    QueueFilter, QueueState, QueueStore, Rejection, Replay, Retired, SettledAndClaimed, Settlement,
    Subscription, SubscriptionState, Wake,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// The memory store, except that event `bad` reads back undecodable;
/// `queries` counts the calls of `query`; with `yields` set, each of them
/// first yields to the runtime (the memory store never does: one broker's
/// correlation would otherwise run to the head before another is polled),
/// and with `read_ms` it first sleeps that long (a slow log read).
#[derive(Default)]
pub struct Watched {
    pub inner: MemoryStore,
    pub bad: std::sync::atomic::AtomicI64,
    pub queries: std::sync::atomic::AtomicU64,
    pub yields: std::sync::atomic::AtomicBool,
    pub read_ms: std::sync::atomic::AtomicU64,
    /// Calls of `settle` alone, and of `settle_and_claim`.
    pub settles: std::sync::atomic::AtomicU64,
    pub settles_with_claims: std::sync::atomic::AtomicU64,
}

impl Watched {
    fn spoil_all(&self, mut batches: Vec<Batch>) -> Vec<Batch> {
        for b in &mut batches {
            for p in &mut b.events {
                p.event = self.spoil(&p.event);
            }
        }
        batches
    }

    fn spoil(&self, e: &Arc<Event>) -> Arc<Event> {
        if e.id != self.bad.load(std::sync::atomic::Ordering::SeqCst) {
            return e.clone();
        }
        Arc::new(Event::undecodable(
            e.id,
            e.stream.clone(),
            e.version,
            e.name.clone(),
            e.meta.created,
            e.meta.correlation.clone(),
            "recursion limit exceeded at line 1 column 129",
            "[[[[[[[[",
        ))
    }
}

/// Appends `streams` streams `s0`, `s1`… of `per_stream` `Ping` events each.
pub async fn backlog(store: &dyn act::Store, streams: usize, per_stream: usize) {
    for s in 0..streams {
        let messages = (0..per_stream)
            .map(|i| act::Message::new("Ping", serde_json::json!({ "i": i })))
            .collect();
        store
            .append(Append::new(format!("s{s}"), messages))
            .await
            .unwrap();
    }
}

#[async_trait]
impl EventStore for Watched {
    async fn append(&self, a: Append) -> act::Result<Vec<Arc<Event>>> {
        self.inner.append(a).await
    }
    async fn query(&self, q: &Query) -> act::Result<Vec<Arc<Event>>> {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.yields.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let ms = self.read_ms.load(std::sync::atomic::Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(self
            .inner
            .query(q)
            .await?
            .iter()
            .map(|e| self.spoil(e))
            .collect())
    }
    async fn head(&self) -> act::Result<i64> {
        self.inner.head().await
    }
    fn wake(&self) -> watch::Receiver<Wake> {
        self.inner.wake()
    }
}

#[async_trait]
impl QueueStore for Watched {
    async fn legacy_checkpoint(&self) -> act::Result<i64> {
        self.inner.legacy_checkpoint().await
    }
    async fn subscribe(&self, s: &[Subscription]) -> act::Result<Vec<SubscriptionState>> {
        self.inner.subscribe(s).await
    }
    async fn subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        self.inner.subscriptions().await
    }
    async fn retire(&self, n: &[String]) -> act::Result<Vec<Retired>> {
        self.inner.retire(n).await
    }
    async fn enqueue(&self, step: &Correlation) -> act::Result<act::Enqueued> {
        self.inner.enqueue(step).await
    }
    async fn replays(&self) -> act::Result<Vec<Replay>> {
        self.inner.replays().await
    }
    async fn claim(&self, c: &Claim) -> act::Result<Vec<Batch>> {
        let batches = self.inner.claim(c).await?;
        Ok(self.spoil_all(batches))
    }
    async fn settle(&self, s: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.settles
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.settle(s).await
    }
    async fn settle_and_claim(&self, s: &[Settlement], c: &Claim) -> SettledAndClaimed {
        self.settles_with_claims
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = act::queue::settle_then_claim(&self.inner, s, c).await;
        SettledAndClaimed {
            settled: out.settled,
            claimed: out.claimed.map(|b| self.spoil_all(b)),
        }
    }
    async fn renew(
        &self,
        l: &[LeaseRef],
        d: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        self.inner.renew(l, d).await
    }
    async fn release(&self, l: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.inner.release(l).await
    }
    async fn unblock(&self, s: &[String]) -> act::Result<Vec<String>> {
        self.inner.unblock(s).await
    }
    async fn reset(&self, s: &str, p: i64) -> act::Result<QueueState> {
        self.inner.reset(s, p).await
    }
    async fn queues(&self, f: &QueueFilter) -> act::Result<Vec<QueueState>> {
        self.inner.queues(f).await
    }
    async fn pending_by_reaction(&self) -> act::Result<Vec<(String, u64)>> {
        self.inner.pending_by_reaction().await
    }
    async fn next_due(&self, r: &[String]) -> act::Result<Option<Duration>> {
        self.inner.next_due(r).await
    }
}
