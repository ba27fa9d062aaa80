//! A store wrapper that counts calls: on PostgreSQL and Redis each call is one
//! round trip (two for the few that retry), so the drain workload reports
//! how many round trips a claim–fetch–dispatch–settle cycle costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::{
    Append, Batch, Claim, Correlation, Event, EventStore, LeaseRef, Query, QueueFilter, QueueState,
    QueueStore, Rejection, Replay, Retired, SettledAndClaimed, Settlement, Store, Subscription,
    SubscriptionState, Wake,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// Counts every call to the wrapped store.
pub struct Counting {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
    claims: AtomicU64,
    /// Calls per method, in the order of [`METHODS`].
    each: [AtomicU64; METHODS.len()],
}

/// The methods counted one by one.
const METHODS: [&str; 20] = [
    "append",
    "query",
    "head",
    "legacy_checkpoint",
    "subscribe",
    "subscriptions",
    "retire",
    "enqueue",
    "replays",
    "claim",
    "settle",
    "settle_and_claim",
    "renew",
    "release",
    "unblock",
    "reset",
    "queues",
    "pending_by_reaction",
    "next_due",
    "other",
];

impl Counting {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Counting {
            inner,
            calls: AtomicU64::new(0),
            claims: AtomicU64::new(0),
            each: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// (store calls, claim calls) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.claims.load(Ordering::Relaxed),
        )
    }

    /// Calls per method, the methods never called left out.
    pub fn by_method(&self) -> serde_json::Map<String, serde_json::Value> {
        METHODS
            .iter()
            .zip(&self.each)
            .map(|(m, n)| (m.to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| (m, n.into()))
            .collect()
    }

    fn tick(&self, method: &str) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let i = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        self.each[i].fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl EventStore for Counting {
    async fn append(&self, append: Append) -> act::Result<Vec<Arc<Event>>> {
        self.tick("append");
        self.inner.append(append).await
    }
    async fn query(&self, query: &Query) -> act::Result<Vec<Arc<Event>>> {
        self.tick("query");
        self.inner.query(query).await
    }
    async fn head(&self) -> act::Result<i64> {
        self.tick("head");
        self.inner.head().await
    }
    fn wake(&self) -> watch::Receiver<Wake> {
        self.inner.wake()
    }
}

#[async_trait]
impl QueueStore for Counting {
    async fn legacy_checkpoint(&self) -> act::Result<i64> {
        self.tick("legacy_checkpoint");
        self.inner.legacy_checkpoint().await
    }
    async fn subscribe(&self, s: &[Subscription]) -> act::Result<Vec<SubscriptionState>> {
        self.tick("subscribe");
        self.inner.subscribe(s).await
    }
    async fn subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        self.tick("subscriptions");
        self.inner.subscriptions().await
    }
    async fn retire(&self, names: &[String]) -> act::Result<Vec<Retired>> {
        self.tick("retire");
        self.inner.retire(names).await
    }
    async fn enqueue(&self, step: &Correlation) -> act::Result<act::Enqueued> {
        self.tick("enqueue");
        self.inner.enqueue(step).await
    }
    async fn replays(&self) -> act::Result<Vec<Replay>> {
        self.tick("replays");
        self.inner.replays().await
    }
    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        self.tick("claim");
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.inner.claim(claim).await
    }
    async fn settle(&self, s: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.tick("settle");
        self.inner.settle(s).await
    }
    async fn settle_and_claim(&self, s: &[Settlement], c: &Claim) -> SettledAndClaimed {
        // One round trip on PostgreSQL and Redis; a claim all the same.
        self.tick("settle_and_claim");
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.inner.settle_and_claim(s, c).await
    }
    async fn renew(
        &self,
        l: &[LeaseRef],
        d: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        self.tick("renew");
        self.inner.renew(l, d).await
    }
    async fn release(&self, l: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.tick("release");
        self.inner.release(l).await
    }
    async fn unblock(&self, s: &[String]) -> act::Result<Vec<String>> {
        self.tick("unblock");
        self.inner.unblock(s).await
    }
    async fn reset(&self, s: &str, p: i64) -> act::Result<QueueState> {
        self.tick("reset");
        self.inner.reset(s, p).await
    }
    async fn queues(&self, f: &QueueFilter) -> act::Result<Vec<QueueState>> {
        self.tick("queues");
        self.inner.queues(f).await
    }
    async fn pending_by_reaction(&self) -> act::Result<Vec<(String, u64)>> {
        self.tick("pending_by_reaction");
        self.inner.pending_by_reaction().await
    }
    async fn next_due(&self, reactions: &[String]) -> act::Result<Option<Duration>> {
        self.tick("next_due");
        self.inner.next_due(reactions).await
    }
}
