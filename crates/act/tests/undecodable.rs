//! An event a store cannot decode blocks only the queues it reaches, with
//! the decode error; every other event and queue goes on. The durable
//! backends return such events from their own decoders (their tests write
//! bad rows by hand); here a wrapper over the memory store turns one event
//! into what a backend returns for it.

use std::sync::Arc;
use std::time::Duration;

use act::{
    Act, Append, Batch, BrokerOptions, Claim, Correlation, Event, EventStore, LeaseRef,
    MemoryStore, Message, Query, QueueFilter, QueueState, QueueStore, Reaction, Rejection, Replay,
    Retired, Settlement, Store, Subscription, SubscriptionState,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;

/// The memory store, except that event `bad` reads back undecodable.
struct OneBadEvent {
    inner: MemoryStore,
    bad: std::sync::atomic::AtomicI64,
}

impl OneBadEvent {
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

#[async_trait]
impl EventStore for OneBadEvent {
    async fn append(&self, a: Append) -> act::Result<Vec<Arc<Event>>> {
        self.inner.append(a).await
    }
    async fn query(&self, q: &Query) -> act::Result<Vec<Arc<Event>>> {
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
    fn wake(&self) -> watch::Receiver<u64> {
        self.inner.wake()
    }
}

#[async_trait]
impl QueueStore for OneBadEvent {
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
    async fn enqueue(&self, step: &Correlation) -> act::Result<Vec<Option<i64>>> {
        self.inner.enqueue(step).await
    }
    async fn replays(&self) -> act::Result<Vec<Replay>> {
        self.inner.replays().await
    }
    async fn claim(&self, c: &Claim) -> act::Result<Vec<Batch>> {
        let mut batches = self.inner.claim(c).await?;
        for b in &mut batches {
            for p in &mut b.events {
                p.event = self.spoil(&p.event);
            }
        }
        Ok(batches)
    }
    async fn settle(&self, s: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.inner.settle(s).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_blocks_only_the_queues_it_reaches() {
    let store = Arc::new(OneBadEvent {
        inner: MemoryStore::new(),
        bad: std::sync::atomic::AtomicI64::new(0),
    });
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = delivered.clone();
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Ping")
                .to(|e| Some(format!("q-{}", e.stream)))
                .handle(move |e, ctx| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push((ctx.stream().to_string(), e.id));
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for s in ["a", "b", "a", "b"] {
        ids.push(
            store
                .append(Append::new(s, vec![Message::new("Ping", json!({}))]))
                .await
                .unwrap()[0]
                .id,
        );
    }
    store.bad.store(ids[2], std::sync::atomic::Ordering::SeqCst);
    app.broker(BrokerOptions::default())
        .run_once()
        .await
        .unwrap();
    let mut got = delivered.lock().unwrap().clone();
    // Queues run concurrently: no order between them is promised, only
    // within each (a stable sort by queue keeps it).
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("q-a".to_string(), ids[0]),
            ("q-b".to_string(), ids[1]),
            ("q-b".to_string(), ids[3])
        ]
    );
    let a = store
        .queues(&QueueFilter {
            stream: Some("q-a".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert!(a.blocked && a.next == Some(ids[2]), "{a:?}");
    let error = a.error.unwrap_or_default();
    assert!(
        error.contains("cannot be decoded") && error.contains("recursion limit"),
        "{error}"
    );
    let shown = store
        .query(&Query::new().after(ids[1]).limit(1))
        .await
        .unwrap();
    assert_eq!(
        shown[0].undecodable_error(),
        Some("recursion limit exceeded at line 1 column 129")
    );
}
