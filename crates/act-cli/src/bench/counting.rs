//! A store wrapper that counts calls: on PostgreSQL and Redis each call is one
//! round trip (two for the few that retry), so the drain workload reports
//! how many round trips a claim–fetch–dispatch–settle cycle costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::{
    Append, Batch, Claim, Correlation, Event, EventStore, LeaseRef, Query, QueueFilter, QueueState,
    QueueStore, Rejection, Replay, Retired, Settlement, Store, Subscription, SubscriptionState,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// Counts every call to the wrapped store.
pub struct Counting {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
    claims: AtomicU64,
}

impl Counting {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Counting {
            inner,
            calls: AtomicU64::new(0),
            claims: AtomicU64::new(0),
        }
    }

    /// (store calls, claim calls) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.claims.load(Ordering::Relaxed),
        )
    }

    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl EventStore for Counting {
    async fn append(&self, append: Append) -> act::Result<Vec<Arc<Event>>> {
        self.tick();
        self.inner.append(append).await
    }
    async fn query(&self, query: &Query) -> act::Result<Vec<Arc<Event>>> {
        self.tick();
        self.inner.query(query).await
    }
    async fn head(&self) -> act::Result<i64> {
        self.tick();
        self.inner.head().await
    }
    fn wake(&self) -> watch::Receiver<u64> {
        self.inner.wake()
    }
}

#[async_trait]
impl QueueStore for Counting {
    async fn legacy_checkpoint(&self) -> act::Result<i64> {
        self.tick();
        self.inner.legacy_checkpoint().await
    }
    async fn subscribe(&self, s: &[Subscription]) -> act::Result<Vec<SubscriptionState>> {
        self.tick();
        self.inner.subscribe(s).await
    }
    async fn subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        self.tick();
        self.inner.subscriptions().await
    }
    async fn retire(&self, names: &[String]) -> act::Result<Vec<Retired>> {
        self.tick();
        self.inner.retire(names).await
    }
    async fn enqueue(&self, step: &Correlation) -> act::Result<Vec<Option<i64>>> {
        self.tick();
        self.inner.enqueue(step).await
    }
    async fn replays(&self) -> act::Result<Vec<Replay>> {
        self.tick();
        self.inner.replays().await
    }
    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        self.tick();
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.inner.claim(claim).await
    }
    async fn settle(&self, s: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.tick();
        self.inner.settle(s).await
    }
    async fn renew(
        &self,
        l: &[LeaseRef],
        d: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        self.tick();
        self.inner.renew(l, d).await
    }
    async fn release(&self, l: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.tick();
        self.inner.release(l).await
    }
    async fn unblock(&self, s: &[String]) -> act::Result<Vec<String>> {
        self.tick();
        self.inner.unblock(s).await
    }
    async fn reset(&self, s: &str, p: i64) -> act::Result<QueueState> {
        self.tick();
        self.inner.reset(s, p).await
    }
    async fn queues(&self, f: &QueueFilter) -> act::Result<Vec<QueueState>> {
        self.tick();
        self.inner.queues(f).await
    }
    async fn pending_by_reaction(&self) -> act::Result<Vec<(String, u64)>> {
        self.tick();
        self.inner.pending_by_reaction().await
    }
    async fn next_due(&self, reactions: &[String]) -> act::Result<Option<Duration>> {
        self.tick();
        self.inner.next_due(reactions).await
    }
}
