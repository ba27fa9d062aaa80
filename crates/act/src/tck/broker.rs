//! Kit tests through the broker: delivery, order, retries, blocking, leases,
//! shutdown, wake-up, and the action path reactions write through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::support::{app, broker_options, fixed_backoff, ping, pings, queue, Probe, PATIENCE};
use super::Backend;
use crate::error::Error;
use crate::event::{Actor, Append, Message};
use crate::query::Query;
use crate::reaction::{HandlerError, Reaction, ReactionBuilder};
use crate::state::{Action, Invariant, State, SNAPSHOT};

fn per_stream(builder: ReactionBuilder) -> ReactionBuilder {
    builder.to(|e| Some(format!("q-{}", e.stream)))
}

/// A static resolver sends every event to its one queue, in id order.
pub async fn static_resolver_delivers_to_one_queue(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("all"))],
    );
    let mut ids = pings(&*f.store, "a", 2).await;
    ids.extend(pings(&*f.store, "b", 2).await);
    let stats = app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(probe.delivered("all"), ids);
    assert_eq!(stats.events, 4);
    assert_eq!(stats.reactions, 4);
    let q = queue(&*f.store, "all").await;
    assert_eq!((q.position, q.lag), (ids[3], 0));
}

/// A dynamic resolver picks a queue per event; `None` skips the event.
pub async fn dynamic_resolver_delivers_per_event_and_skips_none(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let r = probe.reaction(Reaction::on("Ping").to(|e| {
        if e.data.get("skip").is_some() {
            None
        } else {
            Some(format!("q-{}", e.stream))
        }
    }));
    let app = app(f.store.clone(), vec![r]);
    let a1 = ping(&*f.store, "a", json!({})).await;
    let b1 = ping(&*f.store, "b", json!({})).await;
    ping(&*f.store, "c", json!({"skip": true})).await;
    let a2 = ping(&*f.store, "a", json!({})).await;
    app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(probe.delivered("q-a"), vec![a1.id, a2.id]);
    assert_eq!(probe.delivered("q-b"), vec![b1.id]);
    assert_eq!(probe.calls().len(), 3);
    let queues = f.store.queues(&Default::default()).await.unwrap();
    assert_eq!(
        queues.iter().map(|q| q.stream.as_str()).collect::<Vec<_>>(),
        vec!["q-a", "q-b"]
    );
}

/// Per queue, every event is delivered once, in id order, failures included.
pub async fn events_reach_handlers_in_order_per_queue(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![
            probe.reaction(
                per_stream(Reaction::on("Ping").named("per-stream"))
                    .backoff(fixed_backoff(Duration::ZERO)),
            ),
            probe.reaction(
                Reaction::on("Ping")
                    .named("all")
                    .to_stream("all")
                    .backoff(fixed_backoff(Duration::ZERO)),
            ),
        ],
    );
    let mut rng = fastrand::Rng::with_seed(7);
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut failing = Vec::new();
    for i in 0..150 {
        let stream = format!("s{}", rng.usize(..5));
        let fail = rng.u8(..10) == 0;
        let data = if fail {
            json!({"i": i, "fail": 1})
        } else {
            json!({"i": i})
        };
        let e = ping(&*f.store, &stream, data).await;
        expected
            .entry(format!("q-{stream}"))
            .or_default()
            .push(e.id);
        expected.entry("all".into()).or_default().push(e.id);
        if fail {
            failing.push(e.id);
        }
    }
    let broker = app.broker(broker_options("A").batch(7));
    broker.run_once().await.unwrap();
    for (q, ids) in &expected {
        assert_eq!(&probe.delivered(q), ids, "queue {q}");
    }
    for c in probe.calls() {
        let fails = failing.contains(&c.event);
        assert_eq!(c.ok, !fails || c.attempt == 2, "{c:?}");
    }
    assert!(broker.stats().retries >= failing.len() as u64);
}

/// A new broker (a restart, another process) continues from the stored
/// checkpoint and positions: nothing is delivered twice, nothing skipped.
pub async fn correlation_checkpoint_survives_a_new_broker(b: &impl Backend) {
    let f = b.open().await;
    let first = Probe::new();
    let app1 = app(
        f.store.clone(),
        vec![first.reaction(per_stream(Reaction::on("Ping")))],
    );
    let ids = pings(&*f.store, "a", 5).await;
    app1.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(first.delivered("q-a"), ids);
    let head = f.store.head().await.unwrap();
    let subs = f.store.subscriptions().await.unwrap();
    assert!(subs.iter().all(|s| s.checkpoint == head), "{subs:?}");

    let other = b.reopen(&f).await;
    let second = Probe::new();
    let app2 = app(
        other.clone(),
        vec![second.reaction(per_stream(Reaction::on("Ping")))],
    );
    app2.broker(broker_options("B")).run_once().await.unwrap();
    assert!(
        second.calls().is_empty(),
        "redelivered: {:?}",
        second.calls()
    );
    let more = pings(&*other, "a", 2).await;
    app2.broker(broker_options("B")).run_once().await.unwrap();
    assert_eq!(second.delivered("q-a"), more);
}

/// Backoff is stored in the queue: no broker retries before it is due; any
/// broker retries after, with the attempt count from the store.
pub async fn a_failed_handler_is_retried_after_its_backoff_by_any_broker(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let reaction = || {
        probe.reaction(
            Reaction::on("Ping")
                .to_stream("q")
                .max_retries(3)
                .backoff(fixed_backoff(Duration::from_secs(10))),
        )
    };
    let app_a = app(f.store.clone(), vec![reaction()]);
    let app_b = app(b.reopen(&f).await, vec![reaction()]);
    let e = ping(&*f.store, "a", json!({"fail": 1})).await;
    app_a.broker(broker_options("A")).run_once().await.unwrap();
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.retries, q.position), (1, 0));
    assert!(
        q.error
            .as_deref()
            .is_some_and(|e| e.contains("probe fails attempt 1")),
        "{q:?}"
    );
    app_b.broker(broker_options("B")).run_once().await.unwrap();
    assert_eq!(probe.calls().len(), 1, "retried before its time");
    f.clock.advance(Duration::from_secs(11)).await;
    app_b.broker(broker_options("B")).run_once().await.unwrap();
    let calls = probe.calls();
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.event, c.attempt, c.ok))
            .collect::<Vec<_>>(),
        vec![(e.id, 1, false), (e.id, 2, true)]
    );
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.retries, q.position, q.error), (0, e.id, None));
}

/// After `max_retries` retries the queue blocks with the error text.
pub async fn a_queue_blocks_after_max_retries(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(
            Reaction::on("Ping")
                .to_stream("q")
                .max_retries(2)
                .backoff(fixed_backoff(Duration::from_secs(1))),
        )],
    );
    let e = ping(&*f.store, "a", json!({"poison": true})).await;
    let broker = app.broker(broker_options("A"));
    for _ in 0..5 {
        broker.run_once().await.unwrap();
        f.clock.advance(Duration::from_secs(60)).await;
    }
    let attempts: Vec<u32> = probe.calls().iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3], "one attempt plus two retries");
    let q = queue(&*f.store, "q").await;
    assert!(q.blocked);
    let error = q.error.unwrap_or_default();
    assert!(
        error.contains("poisoned") && error.contains(&e.id.to_string()),
        "{error}"
    );
    assert_eq!(broker.stats().blocked, 1);
}

/// A handler that fails because the store is unavailable is retried past
/// `max_retries` without blocking the queue: an outage is not a poison.
pub async fn a_store_outage_in_a_handler_never_blocks_the_queue(b: &impl Backend) {
    let f = b.open().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = {
        let seen = seen.clone();
        Reaction::on("Ping")
            .to_stream("q")
            .max_retries(1)
            .backoff(fixed_backoff(Duration::ZERO))
            .handle(move |e, ctx| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(ctx.attempt());
                    if ctx.attempt() <= 5 {
                        return Err(Error::Unavailable {
                            store: "test".into(),
                            source: "connection refused".into(),
                        }
                        .into());
                    }
                    let _ = e;
                    Ok(())
                }
            })
    };
    let app = app(f.store.clone(), vec![r]);
    let e = ping(&*f.store, "a", json!({})).await;
    app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.blocked, q.position), (false, e.id));
}

/// A permanent error blocks at once.
pub async fn a_permanent_error_blocks_at_once(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("q"))],
    );
    ping(&*f.store, "a", json!({"permanent": true})).await;
    app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(probe.calls().len(), 1);
    let q = queue(&*f.store, "q").await;
    assert!(q.blocked);
    assert!(q.error.unwrap_or_default().contains("probe fails for good"));
}

/// A panic is a failure like any other: retried, then the queue goes on.
pub async fn a_panicking_handler_is_retried_like_an_error(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(
            Reaction::on("Ping")
                .to_stream("q")
                .backoff(fixed_backoff(Duration::ZERO)),
        )],
    );
    let e = ping(&*f.store, "a", json!({"panic": 1})).await;
    let after = ping(&*f.store, "a", json!({})).await;
    let broker = app.broker(broker_options("A"));
    broker.run_once().await.unwrap();
    assert_eq!(probe.delivered("q"), vec![e.id, after.id]);
    assert_eq!(broker.stats().retries, 1);
    assert!(!queue(&*f.store, "q").await.blocked);
}

/// One poisoned queue stays blocked while every other queue is delivered.
pub async fn a_blocked_queue_does_not_delay_others(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(per_stream(Reaction::on("Ping")))],
    );
    ping(&*f.store, "bad", json!({"permanent": true})).await;
    let mut expected = BTreeMap::new();
    for i in 0..60 {
        let s = format!("good-{}", i % 6);
        let e = ping(&*f.store, &s, json!({})).await;
        expected
            .entry(format!("q-{s}"))
            .or_insert_with(Vec::new)
            .push(e.id);
        if i % 10 == 0 {
            ping(&*f.store, "bad", json!({})).await;
        }
    }
    app.broker(broker_options("A").concurrency(2))
        .run_once()
        .await
        .unwrap();
    for (q, ids) in &expected {
        assert_eq!(&probe.delivered(q), ids);
    }
    let bad = queue(&*f.store, "q-bad").await;
    assert!(bad.blocked);
    assert_eq!(bad.lag, 7, "the blocked queue keeps all its pending events");
}

/// Once the cause is removed, unblock resumes the queue at the failed event
/// and it finishes in order.
pub async fn unblock_lets_a_blocked_queue_finish(b: &impl Backend) {
    let f = b.open().await;
    let broken = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = {
        let broken = broken.clone();
        let seen = seen.clone();
        Reaction::on("Ping")
            .to_stream("q")
            .max_retries(0)
            .handle(move |e, _ctx| {
                let broken = broken.clone();
                let seen = seen.clone();
                async move {
                    if e.data["bad"] == json!(true) && broken.load(Ordering::SeqCst) {
                        return Err(HandlerError::transient("dependency down"));
                    }
                    seen.lock().unwrap().push(e.id);
                    Ok(())
                }
            })
    };
    let app = app(f.store.clone(), vec![r]);
    let a = ping(&*f.store, "s", json!({})).await;
    let bad = ping(&*f.store, "s", json!({"bad": true})).await;
    let c = ping(&*f.store, "s", json!({})).await;
    let broker = app.broker(broker_options("A"));
    broker.run_once().await.unwrap();
    assert!(queue(&*f.store, "q").await.blocked);
    assert_eq!(*seen.lock().unwrap(), vec![a.id]);
    broken.store(false, Ordering::SeqCst);
    assert_eq!(
        f.store.unblock(&["q".into()]).await.unwrap(),
        vec!["q".to_string()]
    );
    broker.run_once().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![a.id, bad.id, c.id]);
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.blocked, q.position, q.lag), (false, c.id, 0));
}

/// Reset to 0 replays the queue's events through its handler, in order.
pub async fn reset_replays_events_through_the_handler(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("q"))],
    );
    let ids = pings(&*f.store, "a", 3).await;
    let broker = app.broker(broker_options("A"));
    broker.run_once().await.unwrap();
    f.store.reset("q", 0).await.unwrap();
    broker.run_once().await.unwrap();
    let twice: Vec<i64> = ids.iter().chain(&ids).copied().collect();
    assert_eq!(probe.delivered("q"), twice);
    f.store.reset("q", ids[1]).await.unwrap();
    broker.run_once().await.unwrap();
    assert_eq!(probe.delivered("q").len(), 7);
    assert_eq!(probe.delivered("q")[6], ids[2]);
}

/// Events that succeeded before a failure in the same batch are acked and
/// not delivered again.
pub async fn partial_progress_is_acked_before_the_retry(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(
            Reaction::on("Ping")
                .to_stream("q")
                .backoff(fixed_backoff(Duration::from_secs(10))),
        )],
    );
    let ok = pings(&*f.store, "a", 3).await;
    let failing = ping(&*f.store, "a", json!({"fail": 1})).await;
    let broker = app.broker(broker_options("A"));
    broker.run_once().await.unwrap();
    let q = queue(&*f.store, "q").await;
    assert_eq!(
        (q.position, q.retries, q.next),
        (ok[2], 1, Some(failing.id))
    );
    f.clock.advance(Duration::from_secs(11)).await;
    broker.run_once().await.unwrap();
    let mut all = ok.clone();
    all.push(failing.id);
    assert_eq!(probe.delivered("q"), all, "no event delivered twice");
}

/// While a hot queue's handler is stuck on its first event, a thousand other
/// queues are delivered: the hot queue holds one slot, not the broker.
pub async fn a_hot_queue_does_not_starve_a_thousand_others(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(per_stream(Reaction::on("Ping")))],
    );
    let gate = ping(&*f.store, "hot", json!({"gate": true})).await;
    let mut hot = vec![gate.id];
    hot.extend(pings(&*f.store, "hot", 2000).await);
    let mut cold = Vec::new();
    for chunk in 0..10 {
        let messages: Vec<Append> = (0..100)
            .map(|i| {
                Append::new(
                    format!("cold-{}", chunk * 100 + i),
                    vec![Message::new("Ping", json!({}))],
                )
            })
            .collect();
        for m in messages {
            cold.extend(f.store.append(m).await.unwrap().iter().map(|e| e.id));
        }
    }
    let handle = app.broker(broker_options("A").concurrency(4)).start();
    probe
        .until("all cold queues delivered while hot is stuck", |calls| {
            calls
                .iter()
                .filter(|c| c.ok && c.queue.starts_with("q-cold-"))
                .count()
                == cold.len()
        })
        .await;
    assert!(
        probe.delivered("q-hot").is_empty(),
        "hot is still stuck on its first event"
    );
    probe.open();
    probe
        .until("the hot queue delivered", |calls| {
            calls.iter().filter(|c| c.ok && c.queue == "q-hot").count() == hot.len()
        })
        .await;
    handle.shutdown().await.unwrap();
    assert_eq!(probe.delivered("q-hot"), hot);
}

/// Higher-priority queues are delivered before lower ones.
pub async fn higher_priority_reactions_are_delivered_first(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![
            probe.reaction(Reaction::on("Ping").named("low").to_stream("low")),
            probe.reaction(
                Reaction::on("Ping")
                    .named("high")
                    .to_stream("high")
                    .priority(10),
            ),
        ],
    );
    pings(&*f.store, "a", 3).await;
    app.broker(broker_options("A").concurrency(1).batch(1))
        .run_once()
        .await
        .unwrap();
    let order: Vec<String> = probe.calls().into_iter().map(|c| c.queue).collect();
    assert_eq!(order, vec!["high", "high", "high", "low", "low", "low"]);
}

/// When another claim, an unblock or a reset fences the lease off, the next
/// renewal fails and the running handler is told.
pub async fn a_handler_whose_lease_was_lost_is_told_so(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("q"))],
    );
    let e = ping(&*f.store, "a", json!({"gate": true})).await;
    let handle = app.broker(broker_options("A")).start();
    probe.entered().await;
    // An operator resets the queue: the token moves on.
    f.store.reset("q", 0).await.unwrap();
    probe
        .until("the handler to see its lease lost", |calls| {
            calls
                .iter()
                .any(|c| c.event == e.id && c.lease_lost && !c.ok)
        })
        .await;
    probe.open();
    probe
        .until("redelivery under the new lease", |calls| {
            calls.iter().any(|c| c.ok)
        })
        .await;
    let stats = handle.shutdown().await.unwrap();
    assert!(stats.lost >= 1, "{stats:?}");
    assert!(
        stats.rejected >= 1,
        "the stale settlement is rejected: {stats:?}"
    );
}

/// Shutdown stops claiming, lets the running handler finish, acks it and
/// releases every lease; a later broker finishes the rest exactly once.
pub async fn shutdown_lets_in_flight_handlers_finish_and_releases_leases(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let reaction = || probe.reaction(Reaction::on("Ping").to_stream("q"));
    let app1 = app(f.store.clone(), vec![reaction()]);
    let first = ping(&*f.store, "a", json!({"stubborn": true})).await;
    let rest = pings(&*f.store, "a", 3).await;
    let handle = app1.broker(broker_options("A")).start();
    probe.entered().await;
    let stopping = tokio::spawn(handle.shutdown());
    probe.open();
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let q = queue(&*f.store, "q").await;
    assert_eq!(q.lease_owner, None, "the lease was released");
    assert!(q.position >= first.id, "the finished handler was acked");
    let app2 = app(f.store.clone(), vec![reaction()]);
    app2.broker(broker_options("B")).run_once().await.unwrap();
    let mut all = vec![first.id];
    all.extend(rest);
    assert_eq!(probe.delivered("q"), all, "each event once, in order");
}

/// A handler that ignores shutdown is aborted after the grace period; its
/// lease is released so another broker takes over at once.
pub async fn shutdown_aborts_handlers_past_the_grace_period_and_releases_leases(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app1 = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("q"))],
    );
    let e = ping(&*f.store, "a", json!({"stubborn": true})).await;
    let handle = app1
        .broker(broker_options("A").grace(Duration::from_millis(50)))
        .start();
    probe.entered().await;
    tokio::time::timeout(PATIENCE, handle.shutdown())
        .await
        .unwrap()
        .unwrap();
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.lease_owner, q.position), (None, 0));
    probe.open();
    app1.broker(broker_options("B")).run_once().await.unwrap();
    assert_eq!(probe.delivered("q"), vec![e.id]);
}

/// An idle broker reacts to a commit without waiting for its poll.
pub async fn a_commit_wakes_an_idle_broker(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("q"))],
    );
    let handle = app
        .broker(broker_options("A").poll(Duration::from_secs(3600)))
        .start();
    let first = ping(&*f.store, "a", json!({})).await;
    probe.until("the first event", |c| c.len() == 1).await;
    let second = ping(&*f.store, "a", json!({})).await;
    probe
        .until("the second event, woken by the commit", |c| c.len() == 2)
        .await;
    handle.shutdown().await.unwrap();
    assert_eq!(probe.delivered("q"), vec![first.id, second.id]);
}

/// A commit through another handle on the same store (another process)
/// wakes an idle broker: the backend's cross-process push works.
pub async fn a_commit_through_another_handle_wakes_an_idle_broker(b: &impl Backend) {
    let f = b.open().await;
    let other = b.reopen(&f).await;
    let probe = Probe::new();
    let app = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").to_stream("q"))],
    );
    let handle = app
        .broker(broker_options("A").poll(Duration::from_secs(3600)))
        .start();
    let first = ping(&*other, "a", json!({})).await;
    probe.until("the first event", |c| c.len() == 1).await;
    let second = ping(&*other, "a", json!({})).await;
    probe
        .until(
            "the second event, woken by a commit through another handle",
            |c| c.len() == 2,
        )
        .await;
    handle.shutdown().await.unwrap();
    assert_eq!(probe.delivered("q"), vec![first.id, second.id]);
}

/// Two brokers on one store share the work: every event once, in order.
pub async fn two_brokers_deliver_every_event_once_in_order(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let reactions = || {
        vec![
            probe.reaction(per_stream(Reaction::on("Ping").named("per-stream"))),
            probe.reaction(Reaction::on("Ping").named("all").to_stream("all")),
        ]
    };
    let a = app(f.store.clone(), reactions())
        .broker(broker_options("A").batch(5))
        .start();
    let other = b.reopen(&f).await;
    let bb = app(other, reactions())
        .broker(broker_options("B").batch(5))
        .start();
    let mut writers = Vec::new();
    for w in 0..4 {
        let s = f.store.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..40 {
                ids.push(ping(&*s, &format!("s{w}"), json!({})).await.id);
            }
            ids
        }));
    }
    let mut expected = BTreeMap::new();
    let mut total = 0;
    for (w, t) in writers.into_iter().enumerate() {
        let ids = t.await.unwrap();
        total += ids.len();
        expected.insert(format!("q-s{w}"), ids);
    }
    probe
        .until("every event on both queues", |c| {
            c.iter().filter(|c| c.ok).count() == total * 2
        })
        .await;
    a.shutdown().await.unwrap();
    bb.shutdown().await.unwrap();
    let mut all: Vec<i64> = expected.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(probe.delivered("all"), all);
    for (q, ids) in &expected {
        assert_eq!(&probe.delivered(q), ids);
    }
}

// --- the action path ---------------------------------------------------------

/// A tally of source events, for the kit's action tests.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    /// Events counted.
    pub count: u64,
    /// Sum of amounts.
    pub sum: i64,
}

/// Events of [`Tally`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub enum TallyEvent {
    /// One more.
    Counted {
        /// The source event id.
        source: i64,
        /// The amount.
        amount: i64,
    },
}

/// Actions of [`Tally`].
#[derive(Debug)]
pub enum TallyAction {
    /// Count a source event (not idempotent on purpose).
    Count {
        /// Source id (must be positive).
        source: i64,
        /// Amount.
        amount: i64,
    },
}

impl Action for TallyAction {
    fn name(&self) -> &str {
        "count"
    }
}

impl State for Tally {
    type Event = TallyEvent;
    type Action = TallyAction;
    const SNAPSHOT_EVERY: Option<u64> = Some(3);

    fn apply(&mut self, e: &TallyEvent) {
        let TallyEvent::Counted { amount, .. } = e;
        self.count += 1;
        self.sum += amount;
    }

    fn decide(&self, a: &TallyAction) -> Result<Vec<TallyEvent>, Invariant> {
        let TallyAction::Count { source, amount } = a;
        if *source <= 0 {
            return Err(Invariant::new("source must be a positive event id"));
        }
        if self.sum + amount < 0 {
            return Err(Invariant::new(format!(
                "the sum cannot go below zero ({} {amount:+})",
                self.sum
            )));
        }
        Ok(vec![TallyEvent::Counted {
            source: *source,
            amount: *amount,
        }])
    }
}

fn tally_reaction(fail_after_append: bool) -> Reaction {
    Reaction::on("Ping")
        .named("tally")
        .to_stream("tally")
        .backoff(fixed_backoff(Duration::ZERO))
        .handle(move |e, ctx| async move {
            ctx.act::<Tally>(
                "tally",
                &TallyAction::Count {
                    source: e.id,
                    amount: 1,
                },
            )
            .await?;
            if fail_after_append && ctx.attempt() == 1 {
                return Err(HandlerError::transient("crash after the append"));
            }
            Ok(())
        })
}

/// Events a reaction appends carry the source's correlation and name the
/// source event and the action as their cause.
pub async fn derived_events_carry_correlation_and_causation(b: &impl Backend) {
    let f = b.open().await;
    let app = app(f.store.clone(), vec![tally_reaction(false)]);
    let src = f
        .store
        .append(Append::new("a", vec![Message::new("Ping", json!({}))]).correlate("corr-x"))
        .await
        .unwrap()
        .remove(0);
    app.broker(broker_options("A")).run_once().await.unwrap();
    let out = f.store.query(&Query::new().stream("tally")).await.unwrap();
    assert_eq!(out.len(), 1);
    let m = &out[0].meta;
    assert_eq!(m.correlation, "corr-x");
    assert_eq!(
        m.causation
            .event
            .as_ref()
            .map(|e| (e.id, e.name.as_str(), e.stream.as_str())),
        Some((src.id, "Ping", "a"))
    );
    assert_eq!(
        m.causation
            .action
            .as_ref()
            .map(|a| (a.name.as_str(), a.stream.as_str())),
        Some(("count", "tally"))
    );
    assert_eq!(m.actor.id, "tally");
}

/// A reaction that appended and then failed is redelivered; its second append
/// carries the same idempotency key and writes nothing new.
pub async fn a_redelivered_reaction_does_not_duplicate_what_it_wrote(b: &impl Backend) {
    let f = b.open().await;
    let app = app(f.store.clone(), vec![tally_reaction(true)]);
    let ids = pings(&*f.store, "a", 4).await;
    let broker = app.broker(broker_options("A"));
    broker.run_once().await.unwrap();
    assert!(broker.stats().retries >= 1);
    let counted: Vec<i64> = f
        .store
        .query(&Query::new().stream("tally").names(["Counted"]))
        .await
        .unwrap()
        .iter()
        .map(|e| e.data["source"].as_i64().unwrap())
        .collect();
    assert_eq!(counted, ids, "one Counted per source, in order");
    let t = app.load::<Tally>("tally").await.unwrap();
    assert_eq!((t.state.count, t.state.sum), (4, 4));
}

/// A refused action is a typed error naming the invariant; nothing appended.
pub async fn a_rejected_action_appends_nothing_and_names_the_invariant(b: &impl Backend) {
    let f = b.open().await;
    let app = app(f.store.clone(), vec![]);
    let err = app
        .act::<Tally>(
            "tally",
            &TallyAction::Count {
                source: 0,
                amount: 1,
            },
            &Actor::system("test"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Rejected {
            stream,
            action,
            reason,
        } => {
            assert_eq!((stream.as_str(), action.as_str()), ("tally", "count"));
            assert!(reason.contains("positive"));
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(f.store.head().await.unwrap(), 0);
}

/// Two applications (two processes) acting on one stream in turn: each sees
/// the other's events, whatever it cached.
pub async fn cached_states_see_appends_by_other_writers(b: &impl Backend) {
    let f = b.open().await;
    let other = b.reopen(&f).await;
    let apps = [app(f.store.clone(), vec![]), app(other, vec![])];
    let actor = Actor::system("test");
    for i in 1..=7i64 {
        let app = &apps[(i % 2) as usize];
        let s = app
            .act::<Tally>(
                "t",
                &TallyAction::Count {
                    source: i,
                    amount: i,
                },
                &actor,
            )
            .await
            .unwrap();
        assert_eq!(
            (s.state.count, s.state.sum),
            (i as u64, i * (i + 1) / 2),
            "after action {i}"
        );
    }
}

/// An action that a stale cached state would refuse is decided again on the
/// current state: refusals are never based on an unconfirmed cache.
pub async fn a_refusal_is_decided_on_the_current_state(b: &impl Backend) {
    let f = b.open().await;
    let other = b.reopen(&f).await;
    let (a, bb) = (app(f.store.clone(), vec![]), app(other, vec![]));
    let actor = Actor::system("test");
    a.act::<Tally>(
        "t",
        &TallyAction::Count {
            source: 1,
            amount: 0,
        },
        &actor,
    )
    .await
    .unwrap();
    bb.act::<Tally>(
        "t",
        &TallyAction::Count {
            source: 2,
            amount: 5,
        },
        &actor,
    )
    .await
    .unwrap();
    // `a` cached sum 0, where -3 is refused; the stream's sum is 5.
    let s = a
        .act::<Tally>(
            "t",
            &TallyAction::Count {
                source: 3,
                amount: -3,
            },
            &actor,
        )
        .await
        .expect("decided on the current state, not the cached one");
    assert_eq!(s.state.sum, 2);
    let err = a
        .act::<Tally>(
            "t",
            &TallyAction::Count {
                source: 4,
                amount: -3,
            },
            &actor,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
}

/// A state with snapshots stores one every N events and loads to the same
/// state as folding every event.
pub async fn states_rebuild_from_snapshots(b: &impl Backend) {
    let f = b.open().await;
    let app = app(f.store.clone(), vec![]);
    let actor = Actor::system("test");
    let mut last = None;
    for i in 1..=10 {
        last = Some(
            app.act::<Tally>(
                "t",
                &TallyAction::Count {
                    source: i,
                    amount: i,
                },
                &actor,
            )
            .await
            .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!((last.state.count, last.state.sum), (10, 55));
    let names: Vec<String> = f
        .store
        .query(&Query::new().stream("t"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let snapshots: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == SNAPSHOT)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        snapshots,
        vec![3, 7, 11],
        "a snapshot after every third event"
    );
    let loaded = app.load::<Tally>("t").await.unwrap();
    assert_eq!((loaded.state.count, loaded.state.sum), (10, 55));
    assert_eq!(loaded.version, Some(12));
    assert_eq!(loaded.since_snapshot, 1);
}
