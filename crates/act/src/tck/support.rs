//! Shared fixtures of the kit: a probe reaction whose behaviour each event's
//! data chooses, and small helpers to append and enqueue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::context::Context;
use crate::event::{Append, Event, Message};
use crate::reaction::{HandlerError, Reaction, ReactionBuilder};
use crate::store::Store;

/// One handler call as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The queue.
    pub queue: String,
    /// The reaction.
    pub reaction: String,
    /// The event id.
    pub event: i64,
    /// The attempt number from the context.
    pub attempt: u32,
    /// True when the call succeeded.
    pub ok: bool,
    /// Lease-lost flag seen by the handler when it returned.
    pub lease_lost: bool,
    /// Shutdown flag seen by the handler when it returned.
    pub shutting_down: bool,
}

/// A reaction fixture that records every call and behaves as the event's data
/// says: `{"fail": k}` fails attempts 1..=k, `{"panic": k}` panics on them,
/// `{"permanent": true}` fails permanently, `{"poison": true}` always fails,
/// `{"gate": true}` waits until [`Probe::open`] (or the context is cancelled),
/// `{"stubborn": true}` waits for the gate ignoring cancellation.
#[derive(Clone, Default)]
pub struct Probe {
    calls: Arc<Mutex<Vec<Call>>>,
    changed: Arc<Notify>,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    open: std::sync::atomic::AtomicBool,
    notify: Notify,
    entered: Notify,
}

/// How long kit tests wait for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

impl Probe {
    /// A probe with no calls yet.
    pub fn new() -> Self {
        Probe::default()
    }

    /// Finishes `builder` with the probe's handler.
    pub fn reaction(&self, builder: ReactionBuilder) -> Reaction {
        let probe = self.clone();
        builder.handle(move |event, ctx| {
            let probe = probe.clone();
            async move { probe.handle(event, ctx).await }
        })
    }

    async fn handle(&self, event: Arc<Event>, ctx: Context) -> Result<(), HandlerError> {
        let d = &event.data;
        let attempt = ctx.attempt();
        let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
        let flag = |k: &str| d.get(k).and_then(Value::as_bool).unwrap_or(false);
        let mut result: Result<(), HandlerError> = Ok(());
        if flag("gate") || flag("stubborn") {
            self.gate.entered.notify_waiters();
            self.gate.entered.notify_one();
            loop {
                let opened = self.gate.notify.notified();
                if self.gate.open.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if flag("stubborn") {
                    opened.await;
                } else {
                    tokio::select! {
                        _ = opened => {}
                        _ = ctx.cancelled() => {
                            result = Err(HandlerError::transient("cancelled"));
                            break;
                        }
                    }
                }
            }
        }
        if result.is_ok() {
            if u64::from(attempt) <= n("panic") {
                self.record(&event, &ctx, false);
                panic!("probe panics on attempt {attempt}");
            }
            if u64::from(attempt) <= n("fail") {
                result = Err(HandlerError::transient(format!(
                    "probe fails attempt {attempt}"
                )));
            } else if flag("permanent") {
                result = Err(HandlerError::permanent("probe fails for good"));
            } else if flag("poison") {
                result = Err(HandlerError::transient("poisoned"));
            }
        }
        self.record(&event, &ctx, result.is_ok());
        result
    }

    fn record(&self, event: &Event, ctx: &Context, ok: bool) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Call {
                queue: ctx.stream().to_string(),
                reaction: ctx.reaction().to_string(),
                event: event.id,
                attempt: ctx.attempt(),
                ok,
                lease_lost: ctx.lease_lost(),
                shutting_down: ctx.shutting_down(),
            });
        self.changed.notify_waiters();
    }

    /// Every call so far, in call order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ids of events handled successfully for `queue`, in call order.
    pub fn delivered(&self, queue: &str) -> Vec<i64> {
        self.calls()
            .into_iter()
            .filter(|c| c.ok && c.queue == queue)
            .map(|c| c.event)
            .collect()
    }

    /// Opens the gate: gated handlers go on.
    pub fn open(&self) {
        self.gate
            .open
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.gate.notify.notify_waiters();
    }

    /// Waits until a gated handler is running.
    pub async fn entered(&self) {
        tokio::time::timeout(PATIENCE, self.gate.entered.notified())
            .await
            .expect("no handler reached the gate");
    }

    /// Waits until `cond` holds for the calls (panics after a generous timeout).
    pub async fn until(&self, what: &str, cond: impl Fn(&[Call]) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if cond(&self.calls()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!("timed out waiting for {what}; calls: {:?}", self.calls());
        }
    }
}

/// Appends one `Ping` event with `data` to `stream`.
pub(crate) async fn ping(store: &dyn Store, stream: &str, data: Value) -> Arc<Event> {
    let mut e = store
        .append(Append::new(stream, vec![Message::new("Ping", data)]))
        .await
        .expect("append");
    e.remove(0)
}

/// Waits until a reader that follows the log sees `n` events. A store may
/// hide committed events from followers for a while (PostgreSQL: behind a
/// transaction still running anywhere on the server, which on a busy
/// machine can take long); visibility is a promise about order, not speed,
/// so tests that read their own writes across streams wait for it.
pub(crate) async fn visible(store: &dyn Store, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = store
            .query(&crate::query::Query::new())
            .await
            .expect("query")
            .len();
        if seen >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen} of {n} committed events became visible to a reader within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Appends `n` plain `Ping` events to `stream`; returns their ids.
pub(crate) async fn pings(store: &dyn Store, stream: &str, n: usize) -> Vec<i64> {
    let messages = (0..n)
        .map(|i| Message::new("Ping", json!({ "i": i })))
        .collect();
    store
        .append(Append::new(stream, messages))
        .await
        .expect("append")
        .iter()
        .map(|e| e.id)
        .collect()
}

/// The reaction the queue-store kit tests enqueue work for.
pub(crate) const REACTION: &str = "r";

/// Registers reactions by name (dynamic targets, starting at the beginning).
pub(crate) async fn subscribe(store: &dyn Store, names: &[&str]) {
    let subs: Vec<crate::subscription::Subscription> = names
        .iter()
        .map(|n| crate::subscription::Subscription {
            name: (*n).to_string(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        })
        .collect();
    store.subscribe(&subs).await.expect("subscribe");
}

/// The checkpoint of reaction `name`.
pub(crate) async fn checkpoint(store: &dyn Store, name: &str) -> i64 {
    store
        .subscriptions()
        .await
        .expect("subscriptions")
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no subscription `{name}`"))
        .checkpoint
}

/// Enqueues `(queue, event)` pairs for [`REACTION`] past its checkpoint.
pub(crate) async fn enqueue(store: &dyn Store, work: &[(&str, i64)]) {
    enqueue_for(store, REACTION, work, 0).await;
}

/// Enqueues with a priority.
pub(crate) async fn enqueue_with_priority(store: &dyn Store, work: &[(&str, i64)], priority: i32) {
    enqueue_for(store, REACTION, work, priority).await;
}

/// Enqueues `(queue, event)` pairs for `reaction` past its checkpoint
/// (registering it first).
pub(crate) async fn enqueue_for(
    store: &dyn Store,
    reaction: &str,
    work: &[(&str, i64)],
    priority: i32,
) {
    subscribe(store, &[reaction]).await;
    let from = checkpoint(store, reaction).await;
    let to = work.iter().map(|w| w.1).max().unwrap_or(from).max(from);
    let work: Vec<_> = work
        .iter()
        .map(|(s, e)| crate::queue::Work {
            stream: (*s).to_string(),
            event: *e,
            reaction: reaction.to_string(),
            priority,
        })
        .collect();
    let after = store
        .enqueue(&crate::subscription::Correlation {
            reactions: vec![reaction.to_string()],
            replay: None,
            from,
            to,
            work,
        })
        .await
        .expect("enqueue");
    assert_eq!(
        (after.positions, after.moved),
        (vec![Some(to)], vec![true]),
        "enqueue from the current checkpoint must apply"
    );
}

/// The state of one queue (panics when it does not exist).
pub(crate) async fn queue(store: &dyn Store, stream: &str) -> crate::queue::QueueState {
    store
        .queues(&crate::queue::QueueFilter {
            stream: Some(stream.to_string()),
            ..Default::default()
        })
        .await
        .expect("queues")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("queue `{stream}` does not exist"))
}

/// A claim for `owner`, running [`REACTION`].
pub(crate) fn claim(
    owner: &str,
    queues: usize,
    events: usize,
    lease: Duration,
) -> crate::queue::Claim {
    crate::queue::Claim {
        owner: owner.to_string(),
        queues,
        events,
        lease,
        reactions: vec![REACTION.to_string()],
    }
}

/// An application on `store` with `reactions` (panics on invalid ones).
pub(crate) fn app(
    store: Arc<dyn Store>,
    reactions: Vec<crate::reaction::Reaction>,
) -> crate::app::Act {
    crate::app::Act::builder(store)
        .reactions(reactions)
        .build()
        .expect("valid reactions")
}

/// Event ids of a batch.
pub(crate) fn ids(batch: &crate::queue::Batch) -> Vec<i64> {
    batch.events.iter().map(|p| p.event.id).collect()
}

/// Broker options for kit tests: long leases (expiry is driven by the test's
/// clock), quick renewals, short grace.
pub(crate) fn broker_options(owner: &str) -> crate::broker::BrokerOptions {
    crate::broker::BrokerOptions::default()
        .owner(owner)
        .concurrency(8)
        .lease(Duration::from_secs(60))
        .renew_every(Duration::from_millis(20))
        .poll(Duration::from_millis(200))
        .grace(Duration::from_secs(10))
        .heartbeat(Duration::from_millis(300))
}

/// A reaction backoff of `base` with no jitter and no growth cap surprises.
pub(crate) fn fixed_backoff(base: Duration) -> crate::backoff::Backoff {
    crate::backoff::Backoff {
        base,
        factor: 2.0,
        cap: base * 64,
        jitter: 0.0,
    }
}
