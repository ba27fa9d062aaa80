//! Kit tests of transactional projections, for the backends that offer
//! them (SQLite and PostgreSQL: their `project` runs a handler's writes and
//! the acknowledgement of its events in one transaction of the store).
//!
//! A backend gives a [`Projector`] over a fresh store and expands
//! [`tck_projection!`](crate::tck_projection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Notify;

use super::support::{broker_options, ping, queue, PATIENCE};
use super::Fixture;
use crate::app::Act;
use crate::context::Context;
use crate::event::Event;
use crate::reaction::{HandlerError, Reaction};

/// A table in the store's own database, written through the backend's
/// transactional `project`.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// Creates the table: one row per applied event and no constraint, so
    /// an event applied twice is two rows.
    async fn create(&self);
    /// In one transaction with the acknowledgement of `events`: inserts one
    /// row per event, or fails (writing nothing) when an event's data holds
    /// `"poison"`.
    async fn apply(&self, ctx: &Context, events: &[Arc<Event>]) -> Result<(), HandlerError>;
    /// The event ids in the table, in id order, duplicates included.
    async fn rows(&self) -> Vec<i64>;
}

/// The poison rule every [`Projector::apply`] follows.
pub fn poisoned(events: &[Arc<Event>]) -> Option<i64> {
    events
        .iter()
        .find(|e| e.data.get("poison").is_some())
        .map(|e| e.id)
}

/// The projection reaction, blocking after `retries` failed attempts.
fn projection(p: &Arc<dyn Projector>, retries: u32) -> Reaction {
    let p = p.clone();
    Reaction::on("Ping")
        .named("table")
        .to_stream("table")
        .max_retries(retries)
        .handle_batch(move |events, ctx| {
            let p = p.clone();
            async move { p.apply(&ctx, &events).await }
        })
}

fn app(f: &Fixture, reactions: Vec<Reaction>) -> Act {
    Act::builder(f.store.clone())
        .reactions(reactions)
        .build()
        .expect("valid reactions")
}

/// A batch applied in the store's transaction is in the table once per
/// event, and the queue is acknowledged past it.
pub async fn a_transactional_projection_applies_each_event_once(f: Fixture, p: Arc<dyn Projector>) {
    p.create().await;
    let app = app(&f, vec![projection(&p, 0)]);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(ping(&*f.store, "a", json!({ "i": i })).await.id);
    }
    let stats = app
        .broker(broker_options("A").batch(100))
        .run_once()
        .await
        .unwrap();
    assert_eq!(p.rows().await, ids);
    assert_eq!(stats.events, 10);
    let q = queue(&*f.store, "table").await;
    assert_eq!((q.position, q.lag, q.retries), (ids[9], 0, 0), "{q:?}");
}

/// A window whose writes fail writes nothing; the events before the
/// failing one are applied one at a time and acknowledged; the queue
/// blocks on the failing event, which is not in the table.
pub async fn a_failed_projection_writes_nothing_and_blocks_on_its_event(
    f: Fixture,
    p: Arc<dyn Projector>,
) {
    p.create().await;
    let app = app(&f, vec![projection(&p, 0)]);
    let e1 = ping(&*f.store, "a", json!({})).await.id;
    let e2 = ping(&*f.store, "a", json!({})).await.id;
    let e3 = ping(&*f.store, "a", json!({"poison": true})).await.id;
    ping(&*f.store, "a", json!({})).await;
    app.broker(broker_options("A").batch(100))
        .run_once()
        .await
        .unwrap();
    assert_eq!(p.rows().await, vec![e1, e2]);
    let q = queue(&*f.store, "table").await;
    assert_eq!(
        (q.position, q.next, q.blocked),
        (e2, Some(e3), true),
        "{q:?}"
    );
}

/// A broker that lost its lease while its projection ran (paused past the
/// lease, then taken over) cannot commit it: its writes roll back, and the
/// new owner's are the only ones, each event once.
pub async fn a_stale_broker_cannot_apply_a_batch_twice(f: Fixture, p: Arc<dyn Projector>) {
    p.create().await;
    let gate = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(true));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stale = {
        let (p, gate, entered, held, failed) = (
            p.clone(),
            gate.clone(),
            entered.clone(),
            held.clone(),
            failed.clone(),
        );
        Reaction::on("Ping")
            .named("table")
            .to_stream("table")
            .handle_batch(move |events, ctx| {
                let (p, gate, entered, held, failed) = (
                    p.clone(),
                    gate.clone(),
                    entered.clone(),
                    held.clone(),
                    failed.clone(),
                );
                async move {
                    if held.swap(false, Ordering::SeqCst) {
                        let opened = gate.notified();
                        entered.notify_one();
                        opened.await;
                    }
                    let r = p.apply(&ctx, &events).await;
                    if let Err(e) = &r {
                        failed
                            .lock()
                            .unwrap_or_else(|x| x.into_inner())
                            .push(e.to_string());
                    }
                    r
                }
            })
    };
    let paused = app(&f, vec![stale]);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(ping(&*f.store, "a", json!({ "i": i })).await.id);
    }
    // One batch at a time: while its handler is paused it claims nothing
    // else, so the other broker is the one that takes the queue over.
    let handle = paused
        .broker(broker_options("paused").batch(100).concurrency(1))
        .start();
    tokio::time::timeout(PATIENCE, entered.notified())
        .await
        .expect("the paused broker's handler did not start");
    // Past its lease on the store's clock: another broker takes over.
    f.clock.advance(Duration::from_secs(61)).await;
    // The lapse of the paused broker's lease counts as a failed attempt.
    let other = app(&f, vec![projection(&p, 3)]);
    other
        .broker(broker_options("other").batch(100))
        .run_once()
        .await
        .unwrap();
    let q = queue(&*f.store, "table").await;
    assert_eq!(
        p.rows().await,
        ids,
        "the new owner applied every event once: {q:?}"
    );
    gate.notify_one();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while failed.lock().unwrap_or_else(|x| x.into_inner()).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale broker's projection did not return"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await.unwrap();
    let why = failed.lock().unwrap_or_else(|x| x.into_inner()).clone();
    assert!(
        why[0].contains("rolled back"),
        "the stale broker's projection must fail: {why:?}"
    );
    assert_eq!(
        p.rows().await,
        ids,
        "the stale broker's writes were rolled back"
    );
    let q = queue(&*f.store, "table").await;
    assert_eq!((q.position, q.lag), (ids[2], 0), "{q:?}");
}

/// Expands the projection kit tests for a backend: `$open` is an async
/// function returning a fresh `(Fixture, Arc<dyn Projector>)`.
#[macro_export]
macro_rules! tck_projection {
    ($open:path) => {
        $crate::tck_projection! { $open;
            a_transactional_projection_applies_each_event_once,
            a_failed_projection_writes_nothing_and_blocks_on_its_event,
            a_stale_broker_cannot_apply_a_batch_twice,
        }
    };
    ($open:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let limit = $crate::tck::TEST_LIMIT;
                let (f, p) = $open().await;
                if ::tokio::time::timeout(limit, $crate::tck::projection::$name(f, p)).await.is_err() {
                    panic!("{} did not finish within {limit:?}", stringify!($name));
                }
            }
        )*
    };
}
