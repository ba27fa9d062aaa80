//! Kit tests of reactions over the life of an application: a reaction added
//! later receives the history, a broker without a reaction never acks its
//! work (both directions of a rolling deploy), a changed resolver skips
//! nothing, a retired reaction's work is dropped visibly, reset replays the
//! log, a lease that ends without a settlement counts, a handler past its
//! timeout is cancelled, and a resolver's bad answer blocks only that
//! reaction's event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::support::{app, broker_options, fixed_backoff, ping, pings, queue, Probe, PATIENCE};
use super::Backend;
use crate::app::Act;
use crate::error::Error;
use crate::reaction::{HandlerError, Reaction};
use crate::store::Store;

/// A reaction added to an application that already has events receives
/// every event of the log from its declared start, once and in order, while
/// the reactions that were there are not redelivered.
pub async fn a_new_reaction_receives_every_historical_event_once_and_in_order(b: &impl Backend) {
    let f = b.open().await;
    let old = Probe::new();
    let v1 = app(
        f.store.clone(),
        vec![old.reaction(
            Reaction::on("Ping")
                .named("audit")
                .to(|e| Some(format!("audit-{}", e.stream))),
        )],
    );
    let mut all = Vec::new();
    for s in ["a", "b", "c"] {
        all.extend(pings(&*f.store, s, 15).await);
    }
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    assert_eq!(old.calls().len(), 45);
    let new = Probe::new();
    let v2 = app(
        f.store.clone(),
        vec![
            old.reaction(
                Reaction::on("Ping")
                    .named("audit")
                    .to(|e| Some(format!("audit-{}", e.stream))),
            ),
            new.reaction(
                Reaction::on("Ping")
                    .named("stats")
                    .to_stream("stats")
                    .from_beginning(),
            ),
        ],
    );
    let handle = v2.broker(broker_options("v2").backfill_batch(7)).start();
    // Live traffic while the new reaction backfills.
    for i in 0..10 {
        all.push(ping(&*f.store, ["a", "b", "c"][i % 3], json!({})).await.id);
    }
    new.until(
        "the new reaction to catch up with history and live events",
        |c| c.iter().filter(|c| c.ok).count() >= all.len(),
    )
    .await;
    old.until("the old reaction to take the live events", |c| {
        c.iter().filter(|c| c.ok).count() >= 55
    })
    .await;
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        new.delivered("stats"),
        all,
        "history and live events, once, in id order"
    );
    assert_eq!(
        old.calls().len(),
        55,
        "the old reaction is not redelivered: {:?}",
        old.calls().len()
    );
    assert!(stats.backfilled >= 45, "{stats:?}");
    let subs = f.store.subscriptions().await.unwrap();
    let head = f.store.head().await.unwrap();
    assert!(
        subs.iter().all(|s| s.checkpoint == head),
        "both caught up: {subs:?}"
    );
}

/// A reaction added later that targets a queue other reactions already
/// moved on still receives its whole history there, in order.
pub async fn a_new_reaction_sharing_a_queue_receives_its_history(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let first = || probe.reaction(Reaction::on("Ping").named("first").to_stream("shared"));
    let ids = pings(&*f.store, "a", 12).await;
    app(f.store.clone(), vec![first()])
        .broker(broker_options("v1"))
        .run_once()
        .await
        .unwrap();
    assert_eq!(queue(&*f.store, "shared").await.position, ids[11]);
    let v2 = app(
        f.store.clone(),
        vec![
            first(),
            probe.reaction(
                Reaction::on("Ping")
                    .named("second")
                    .to_stream("shared")
                    .from_beginning(),
            ),
        ],
    );
    v2.broker(broker_options("v2").backfill_batch(5))
        .run_once()
        .await
        .unwrap();
    let second: Vec<i64> = probe
        .calls()
        .into_iter()
        .filter(|c| c.ok && c.reaction == "second")
        .map(|c| c.event)
        .collect();
    let firsts = probe
        .calls()
        .into_iter()
        .filter(|c| c.reaction == "first")
        .count();
    assert_eq!(second, ids, "the history of the new reaction, in order");
    assert_eq!(firsts, 12, "the first reaction is not redelivered");
    assert_eq!(queue(&*f.store, "shared").await.lag, 0);
}

/// A reaction added later without a declared start is refused when the log
/// already holds events (it could be a projection or a mailer: the code
/// must say); `from_now` takes only events committed after its
/// registration.
pub async fn a_new_reaction_must_declare_its_start_and_from_now_skips_history(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let base = || probe.reaction(Reaction::on("Ping").named("base").to_stream("base"));
    pings(&*f.store, "a", 3).await;
    app(f.store.clone(), vec![base()])
        .broker(broker_options("v1"))
        .run_once()
        .await
        .unwrap();
    let undeclared = app(
        f.store.clone(),
        vec![
            base(),
            probe.reaction(Reaction::on("Ping").named("mailer").to_stream("mail")),
        ],
    );
    match undeclared.broker(broker_options("v2")).run_once().await {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("mailer") && m.contains("from_now"), "{m}")
        }
        other => panic!("an undeclared start on a log with events must be refused, got {other:?}"),
    }
    assert!(matches!(
        undeclared.register().await,
        Err(Error::InvalidInput(_))
    ));
    assert!(
        !f.store
            .subscriptions()
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "mailer"),
        "nothing registered"
    );
    let v2 = app(
        f.store.clone(),
        vec![
            base(),
            probe.reaction(
                Reaction::on("Ping")
                    .named("mailer")
                    .to_stream("mail")
                    .from_now(),
            ),
        ],
    );
    v2.register().await.unwrap();
    let later = ping(&*f.store, "a", json!({})).await;
    v2.broker(broker_options("v2")).run_once().await.unwrap();
    assert_eq!(
        probe.delivered("mail"),
        vec![later.id],
        "only what came after registration"
    );
}

/// Promise 1 in a rolling deploy where new brokers have a reaction old ones
/// lack: an old broker never runs or acks that reaction's work, in its own
/// queue or in a queue it shares; the queue waits, named, for a new broker.
pub async fn a_broker_without_a_reaction_never_acks_its_work(b: &impl Backend) {
    let f = b.open().await;
    let (common, added) = (Probe::new(), Probe::new());
    let retry_later = fixed_backoff(Duration::from_secs(10));
    let common_r = || {
        common.reaction(
            Reaction::on("Ping")
                .named("common")
                .to_stream("shared")
                .backoff(retry_later),
        )
    };
    let v1 = app(f.store.clone(), vec![common_r()]);
    let v2 = app(
        f.store.clone(),
        vec![
            common_r(),
            added.reaction(
                Reaction::on("Ping")
                    .named("added")
                    .to_stream("shared")
                    .backoff(retry_later)
                    .from_beginning(),
            ),
            added.reaction(
                Reaction::on("Ping")
                    .named("added-alone")
                    .to_stream("alone")
                    .backoff(retry_later)
                    .from_beginning(),
            ),
        ],
    );
    v1.register().await.unwrap();
    // The new version's first try at the event fails (its handlers run
    // first), so work of both reactions is left in the queues.
    let e = ping(&*f.store, "a", json!({"fail": 1})).await;
    v2.broker(broker_options("v2")).run_once().await.unwrap();
    f.clock.advance(Duration::from_secs(11)).await;
    let before = (common.calls().len(), added.calls().len());
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    assert_eq!(
        (common.calls().len(), added.calls().len()),
        before,
        "the old broker ran nothing"
    );
    for q in ["shared", "alone"] {
        let st = queue(&*f.store, q).await;
        assert_eq!((st.lag, st.position), (1, 0), "{q}: nothing acked: {st:?}");
        assert!(
            st.waiting
                .as_deref()
                .is_some_and(|w| w.starts_with("added")),
            "{q} names what it waits for: {st:?}"
        );
    }
    v2.broker(broker_options("v2")).run_once().await.unwrap();
    assert_eq!(added.delivered("shared"), vec![e.id]);
    assert_eq!(added.delivered("alone"), vec![e.id]);
    assert_eq!(common.delivered("shared"), vec![e.id]);
    assert_eq!(queue(&*f.store, "shared").await.waiting, None);
}

/// The other direction of a rolling deploy: a reaction the new version
/// removed (without retiring it yet) is still run by old brokers; new ones
/// leave its work alone.
pub async fn a_broker_without_an_old_reaction_leaves_its_work_to_old_brokers(b: &impl Backend) {
    let f = b.open().await;
    let (kept, dropped) = (Probe::new(), Probe::new());
    let retry_later = fixed_backoff(Duration::from_secs(10));
    let kept_r = || {
        kept.reaction(
            Reaction::on("Ping")
                .named("kept")
                .to_stream("k")
                .backoff(retry_later),
        )
    };
    let old_r = || {
        dropped.reaction(
            Reaction::on("Ping")
                .named("old")
                .to_stream("o")
                .backoff(retry_later),
        )
    };
    let v1 = app(f.store.clone(), vec![kept_r(), old_r()]);
    let v2 = app(f.store.clone(), vec![kept_r()]);
    v1.register().await.unwrap();
    let e = ping(&*f.store, "a", json!({"fail": 1})).await;
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    f.clock.advance(Duration::from_secs(11)).await;
    v2.broker(broker_options("v2")).run_once().await.unwrap();
    assert_eq!(kept.delivered("k"), vec![e.id]);
    assert_eq!(
        dropped.delivered("o"),
        Vec::<i64>::new(),
        "the new broker did not run it"
    );
    let st = queue(&*f.store, "o").await;
    assert_eq!((st.lag, st.waiting.as_deref()), (1, Some("old")));
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    assert_eq!(dropped.delivered("o"), vec![e.id]);
}

/// Work names the reaction that handles it: when a resolver answers
/// differently after a deploy, work already enqueued is still handled by
/// that reaction in its queue, never acked without running.
pub async fn a_changed_resolver_never_skips_enqueued_work(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let r = |target: &'static str| {
        probe.reaction(
            Reaction::on("Ping")
                .named("moving")
                .to(move |_| Some(target.to_string()))
                .backoff(fixed_backoff(Duration::from_secs(10))),
        )
    };
    let e = ping(&*f.store, "a", json!({"fail": 1})).await;
    app(f.store.clone(), vec![r("before")])
        .broker(broker_options("v1"))
        .run_once()
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(11)).await;
    let later = ping(&*f.store, "a", json!({})).await;
    app(f.store.clone(), vec![r("after")])
        .broker(broker_options("v2"))
        .run_once()
        .await
        .unwrap();
    assert_eq!(
        probe.delivered("before"),
        vec![e.id],
        "the enqueued event ran in its queue"
    );
    assert_eq!(probe.delivered("after"), vec![later.id]);
}

/// A reaction the application declares retired is retired at registration:
/// its pending work is dropped (and reported), it is never run again, and
/// operators see it retired.
pub async fn a_retired_reaction_s_work_is_dropped_and_reported(b: &impl Backend) {
    let f = b.open().await;
    let (kept, gone) = (Probe::new(), Probe::new());
    let retry_later = fixed_backoff(Duration::from_secs(10));
    let kept_r = || kept.reaction(Reaction::on("Ping").named("kept").to_stream("shared"));
    let v1 = app(
        f.store.clone(),
        vec![
            kept_r(),
            gone.reaction(
                Reaction::on("Ping")
                    .named("gone")
                    .to_stream("shared")
                    .backoff(retry_later),
            ),
        ],
    );
    let e = ping(&*f.store, "a", json!({"fail": 1})).await;
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    assert_eq!(queue(&*f.store, "shared").await.lag, 1);
    f.clock.advance(Duration::from_secs(11)).await;
    let v2 = Act::builder(f.store.clone())
        .reaction(kept_r())
        .retire("gone")
        .build()
        .unwrap();
    let states = v2.register().await.unwrap();
    assert!(
        states
            .iter()
            .any(|s| s.name == "gone" && s.retired.is_some()),
        "{states:?}"
    );
    let calls = gone.calls().len();
    v2.broker(broker_options("v2")).run_once().await.unwrap();
    v1.broker(broker_options("v1-still-running"))
        .run_once()
        .await
        .unwrap();
    assert_eq!(
        gone.calls().len(),
        calls,
        "a retired reaction never runs again, even on an old broker"
    );
    assert_eq!(
        kept.delivered("shared"),
        vec![e.id],
        "kept ran the event, gone did not"
    );
    let st = queue(&*f.store, "shared").await;
    assert_eq!((st.lag, st.waiting), (0, None));
    let more = ping(&*f.store, "a", json!({})).await;
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    assert_eq!(gone.calls().len(), calls);
    assert_eq!(kept.delivered("shared").last(), Some(&more.id));
}

/// Reset replays the log: a projection that now handles more event names is
/// rebuilt from every event it handles, including those never enqueued for
/// it before.
pub async fn reset_replays_events_never_enqueued_before(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let mut log = Vec::new();
    for i in 0..9 {
        let name = if i % 3 == 0 { "Pong" } else { "Ping" };
        let e = f
            .store
            .append(crate::event::Append::new(
                "s",
                vec![crate::event::Message::new(name, json!({"i": i}))],
            ))
            .await
            .unwrap();
        log.push((e[0].id, name));
    }
    let v1 = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").named("projection").to_stream("view"))],
    );
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    let pings_only: Vec<i64> = log
        .iter()
        .filter(|(_, n)| *n == "Ping")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(probe.delivered("view"), pings_only);
    let v2 = app(
        f.store.clone(),
        vec![probe.reaction(
            Reaction::on("Ping")
                .also("Pong")
                .named("projection")
                .to_stream("view"),
        )],
    );
    v2.register().await.unwrap();
    f.store.reset("view", 0).await.unwrap();
    v2.broker(broker_options("v2").backfill_batch(2))
        .run_once()
        .await
        .unwrap();
    let rebuilt: Vec<i64> = probe.delivered("view")[pings_only.len()..].to_vec();
    assert_eq!(
        rebuilt,
        log.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        "every Ping and Pong, in order"
    );
    let st = queue(&*f.store, "view").await;
    assert_eq!((st.lag, st.replay), (0, None));
}

/// Reset works for a queue that never had work when a registered reaction
/// can target it: the replay finds its events in the log.
pub async fn reset_of_a_queue_that_never_had_work_replays_the_log(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let ids = pings(&*f.store, "a", 4).await;
    // Version 1 sent nothing anywhere; version 2 sends every event to `fresh`.
    let v1 = app(
        f.store.clone(),
        vec![probe.reaction(Reaction::on("Ping").named("router").to(|_| None))],
    );
    v1.broker(broker_options("v1")).run_once().await.unwrap();
    let v2 = app(
        f.store.clone(),
        vec![probe.reaction(
            Reaction::on("Ping")
                .named("router")
                .to(|_| Some("fresh".into())),
        )],
    );
    v2.register().await.unwrap();
    assert!(f
        .store
        .queues(&Default::default())
        .await
        .unwrap()
        .is_empty());
    f.store.reset("fresh", 0).await.unwrap();
    v2.broker(broker_options("v2")).run_once().await.unwrap();
    assert_eq!(probe.delivered("fresh"), ids);
}

/// Promise 6: a lease that ends without a settlement (the process died, the
/// handler overran its lease) counts as a failed attempt; the handler sees
/// the true attempt number, and after max retries the queue blocks with an
/// error saying so, without running the handler again.
pub async fn an_expired_lease_counts_as_an_attempt_and_the_queue_blocks_after_max_retries(
    b: &impl Backend,
) {
    let f = b.open().await;
    let attempts = Arc::new(Mutex::new(Vec::<u32>::new()));
    let crashing = || {
        let attempts = attempts.clone();
        app(
            f.store.clone(),
            vec![Reaction::on("Ping")
                .to_stream("q")
                .max_retries(2)
                .handle(move |_e, ctx| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.lock().unwrap().push(ctx.attempt());
                        // Never returns: the process dies around it.
                        std::future::pending::<Result<(), HandlerError>>().await
                    }
                })],
        )
    };
    let e = ping(&*f.store, "a", json!({})).await;
    for attempt in 1..=3usize {
        let handle = crashing()
            .broker(broker_options(&format!("crash-{attempt}")))
            .start();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while attempts.lock().unwrap().len() < attempt {
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempt {attempt} did not start"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The process dies: no settlement, no release.
        drop(handle);
        f.clock.advance(Duration::from_secs(61)).await;
    }
    crashing()
        .broker(broker_options("next"))
        .run_once()
        .await
        .unwrap();
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![1, 2, 3],
        "the true attempt numbers, and no fourth call"
    );
    let st = queue(&*f.store, "q").await;
    assert!(st.blocked, "{st:?}");
    let error = st.error.unwrap_or_default();
    assert!(
        error.contains("expired 3 times without a settlement") && error.contains(&e.id.to_string()),
        "{error}"
    );
    assert_eq!(st.next, Some(e.id));
}

/// A handler that crashes its process on one event in the middle of a
/// batch: the events before it were handled but never acknowledged (the
/// process died). The broker walks the lapsed batch one event at a time,
/// so the crashes land on that event, and the queue blocks there (not at
/// the first event of the batch) with the lease-loss error. The first lapse
/// cannot tell which event crashed and counts against the first of the
/// batch (the walk's ack of it starts the count again), so the crashing
/// event takes one crash more than `max_retries + 1`.
pub async fn a_crash_loop_blocks_at_the_event_that_crashes(b: &impl Backend) {
    let f = b.open().await;
    let attempts = Arc::new(Mutex::new(Vec::<(i64, u32)>::new()));
    let ids = pings(&*f.store, "a", 6).await;
    let poison = ids[3];
    let make = || {
        let attempts = attempts.clone();
        app(
            f.store.clone(),
            vec![Reaction::on("Ping")
                .to_stream("q")
                .max_retries(2)
                .handle(move |e, ctx| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.lock().unwrap().push((e.id, ctx.attempt()));
                        if e.id == poison {
                            // The process dies here.
                            std::future::pending::<()>().await;
                        }
                        Ok::<(), HandlerError>(())
                    }
                })],
        )
    };
    let crashes_at_poison = || {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| *e == poison)
            .count()
    };
    for round in 1..=4usize {
        let handle = make()
            .broker(broker_options(&format!("crash-{round}")))
            .start();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while crashes_at_poison() < round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round} did not reach the poisoned event"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(handle);
        f.clock.advance(Duration::from_secs(61)).await;
    }
    make()
        .broker(broker_options("last"))
        .run_once()
        .await
        .unwrap();
    let st = queue(&*f.store, "q").await;
    assert!(st.blocked, "{st:?}");
    assert_eq!(
        (st.next, st.position),
        (Some(poison), ids[2]),
        "blocked at the poisoned event: {st:?}"
    );
    assert!(
        st.error
            .as_deref()
            .is_some_and(|e| e.contains("without a settlement")),
        "{st:?}"
    );
    let at_poison: Vec<u32> = attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(e, _)| *e == poison)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(
        at_poison,
        vec![1, 1, 2, 3],
        "attempts at the event that crashes"
    );
}

/// A queue whose lease ended without a settlement runs alone on the broker
/// that takes it over, after the rest of its claim was given back: if its
/// handler crashes the process again, no other queue's lease dies with it
/// (and pays a failed attempt for it).
pub async fn a_queue_whose_lease_lapsed_runs_alone(b: &impl Backend) {
    let f = b.open().await;
    // ("start" | "end" | "held", queue, attempt), as handlers saw them.
    let log = Arc::new(Mutex::new(Vec::<(&'static str, String, u32)>::new()));
    let crash_until = Arc::new(std::sync::atomic::AtomicU32::new(2));
    let make = || {
        let (log, crash_until) = (log.clone(), crash_until.clone());
        app(
            f.store.clone(),
            vec![Reaction::on("Ping")
                .to(|e| Some(format!("q-{}", e.stream)))
                .handle(move |_e, ctx| {
                    let (log, crash_until) = (log.clone(), crash_until.clone());
                    async move {
                        let q = ctx.stream().to_string();
                        log.lock()
                            .unwrap()
                            .push(("start", q.clone(), ctx.attempt()));
                        if q == "q-suspect" && ctx.attempt() >= 2 {
                            // Nothing else of this broker may be leased while the
                            // suspect runs: a crash now would lapse it too. (A
                            // failed look is recorded, so the test says why.)
                            let held = match ctx.store().queues(&Default::default()).await {
                                Ok(queues) => queues
                                    .into_iter()
                                    .filter(|x| x.lease_owner.is_some() && x.stream != "q-suspect")
                                    .map(|x| x.stream)
                                    .collect::<Vec<_>>()
                                    .join(","),
                                Err(e) => format!("(the queues could not be listed: {e})"),
                            };
                            log.lock().unwrap().push(("held", held, ctx.attempt()));
                        }
                        let crashing = crash_until.load(std::sync::atomic::Ordering::SeqCst);
                        if q == "q-suspect" && ctx.attempt() <= crashing {
                            // The process dies here.
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        log.lock().unwrap().push(("end", q, ctx.attempt()));
                        Ok::<(), HandlerError>(())
                    }
                })],
        )
    };
    let started = |attempt: u32| {
        let log = log.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while !log
                .lock()
                .unwrap()
                .iter()
                .any(|(k, q, a)| *k == "start" && q == "q-suspect" && *a == attempt)
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "attempt {attempt} of the suspect did not start"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    ping(&*f.store, "suspect", json!({})).await;
    let handle = make().broker(broker_options("first")).start();
    started(1).await;
    drop(handle);
    f.clock.advance(Duration::from_secs(61)).await;
    for s in ["a", "b", "c"] {
        pings(&*f.store, s, 3).await;
    }
    // The next broker claims the suspect with the others; it crashes again.
    let handle = make().broker(broker_options("second")).start();
    started(2).await;
    drop(handle);
    f.clock.advance(Duration::from_secs(61)).await;
    crash_until.store(0, std::sync::atomic::Ordering::SeqCst);
    make()
        .broker(broker_options("third"))
        .run_once()
        .await
        .unwrap();
    let calls = log.lock().unwrap().clone();
    for (_, held, attempt) in calls.iter().filter(|(k, _, _)| *k == "held") {
        assert!(
            held.is_empty(),
            "attempt {attempt} of the suspect ran while {held} was leased: {calls:?}"
        );
    }
    for q in ["q-a", "q-b", "q-c"] {
        assert_eq!(
            calls
                .iter()
                .filter(|(k, x, _)| *k == "end" && x == q)
                .count(),
            3,
            "{q}: {calls:?}"
        );
        assert!(
            calls
                .iter()
                .filter(|(k, x, _)| *k == "start" && x == q)
                .all(|(_, _, a)| *a == 1),
            "{q} paid an attempt for the suspect's crash: {calls:?}"
        );
    }
    let last = calls
        .iter()
        .rposition(|(k, q, a)| *k == "start" && q == "q-suspect" && *a == 3);
    let end = calls
        .iter()
        .rposition(|(k, q, _)| *k == "end" && q == "q-suspect");
    let (Some(start), Some(end)) = (last, end) else {
        panic!("the suspect was not delivered: {calls:?}");
    };
    assert!(
        calls[start + 1..end]
            .iter()
            .all(|(k, q, _)| *k == "held" || q == "q-suspect"),
        "nothing else ran beside the suspect: {calls:?}"
    );
}

/// A handler that runs past its reaction's timeout is cancelled (work it
/// spawned is told through its context; its future is dropped) and counted
/// as a failure with backoff; the retry succeeds.
pub async fn a_handler_past_its_timeout_is_cancelled_and_retried(b: &impl Backend) {
    let f = b.open().await;
    let seen = Arc::new(Mutex::new(Vec::<(u32, bool)>::new()));
    let r = {
        let seen = seen.clone();
        Reaction::on("Ping")
            .to_stream("q")
            .timeout(Duration::from_millis(200))
            .backoff(fixed_backoff(Duration::ZERO))
            .handle(move |_e, ctx| {
                let seen = seen.clone();
                async move {
                    if ctx.attempt() == 1 {
                        let (seen, ctx) = (seen.clone(), ctx.clone());
                        tokio::spawn(async move {
                            ctx.cancelled().await;
                            seen.lock().unwrap().push((1, ctx.timed_out()));
                        });
                        std::future::pending::<()>().await;
                    }
                    seen.lock().unwrap().push((ctx.attempt(), false));
                    Ok::<(), HandlerError>(())
                }
            })
    };
    let e = ping(&*f.store, "a", json!({})).await;
    let broker = app(f.store.clone(), vec![r]).broker(broker_options("A"));
    tokio::time::timeout(PATIENCE, broker.run_once())
        .await
        .expect("settle hung on a handler past its timeout")
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spawned work never heard of the timeout"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![(1, true), (2, false)]);
    let stats = broker.stats();
    assert_eq!(
        (stats.timeouts, stats.retries, stats.events),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(queue(&*f.store, "q").await.position, e.id);
}

/// A resolver that answers a queue name no store accepts, or panics, blocks
/// only that reaction's event, with the reason; every other queue and
/// reaction goes on.
pub async fn a_resolver_s_bad_answer_blocks_only_that_reaction_s_event(b: &impl Backend) {
    let f = b.open().await;
    let probe = Probe::new();
    let routed = probe.reaction(Reaction::on("Ping").named("routed").to(|e| {
        match e.data.get("target").and_then(|t| t.as_str()) {
            Some("long") => Some("x".repeat(10_000)),
            Some("nul") => Some("a\0b".into()),
            Some("panic") => panic!("resolver bug"),
            _ => Some(format!("ok-{}", e.stream)),
        }
    }));
    let all = probe.reaction(Reaction::on("Ping").named("all").to_stream("all"));
    let a = app(f.store.clone(), vec![routed, all]);
    let mut ids = Vec::new();
    for t in ["fine", "long", "fine", "nul", "panic", "fine"] {
        ids.push(ping(&*f.store, "s", json!({ "target": t })).await.id);
    }
    a.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(
        probe.delivered("all"),
        ids,
        "the other reaction got every event"
    );
    assert_eq!(
        probe.delivered("ok-s"),
        vec![ids[0], ids[2], ids[5]],
        "the good targets were delivered"
    );
    let bad = queue(
        &*f.store,
        &format!("{}routed", crate::broker::INVALID_TARGET_PREFIX),
    )
    .await;
    assert!(bad.blocked, "{bad:?}");
    assert_eq!((bad.next, bad.lag), (Some(ids[1]), 3));
    let error = bad.error.unwrap_or_default();
    assert!(
        error.contains("routed")
            && error.contains(&ids[1].to_string())
            && error.contains("1024 bytes"),
        "{error}"
    );
}

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "name", content = "data")]
enum Account {
    Deposited {
        amount: u64,
    },
    #[allow(dead_code)]
    Closed,
}

async fn deposits(store: &dyn Store, stream: &str, amounts: &[serde_json::Value]) -> Vec<i64> {
    let messages = amounts
        .iter()
        .map(|a| crate::event::Message::new("Deposited", json!({ "amount": a })))
        .collect();
    store
        .append(crate::event::Append::new(stream, messages))
        .await
        .expect("append")
        .iter()
        .map(|e| e.id)
        .collect()
}

/// A typed reaction gets its events decoded; one whose data does not decode
/// into the type blocks its queue with the decode error (nothing is
/// skipped), and the events after it wait behind it.
pub async fn a_typed_event_that_does_not_decode_blocks_its_queue_with_the_decode_error(
    b: &impl Backend,
) {
    let f = b.open().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let r = crate::on!(Account { Deposited })
        .named("typed")
        .to_stream("typed")
        .max_retries(5)
        .handle(move |event, raw, _ctx| {
            let s = s.clone();
            async move {
                if let Account::Deposited { amount } = event {
                    s.lock().unwrap().push((raw.id, amount));
                }
                Ok(())
            }
        });
    let ids = deposits(&*f.store, "acct", &[json!(1), json!("ten"), json!(3)]).await;
    let stats = app(f.store.clone(), vec![r])
        .broker(broker_options("A"))
        .run_once()
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(ids[0], 1)]);
    let q = queue(&*f.store, "typed").await;
    assert!(
        q.blocked,
        "a permanent decode failure blocks at once: {q:?}"
    );
    assert_eq!((q.position, q.next, q.lag), (ids[0], Some(ids[1]), 2));
    let error = q.error.unwrap_or_default();
    assert!(
        error.contains(&format!("event {}", ids[1])) && error.contains("invalid type"),
        "{error}"
    );
    assert_eq!((stats.blocked, stats.retries), (1, 0), "{stats:?}");
}

/// A typed resolver that cannot decode an event sends it to the reaction's
/// invalid-target queue, which blocks with the decode error; the events that
/// decode are routed and delivered.
pub async fn a_typed_resolver_routes_an_event_it_cannot_decode_to_a_blocked_queue(
    b: &impl Backend,
) {
    let f = b.open().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let r = crate::Reaction::on_event::<Account>()
        .named("routed")
        .to(|event: &Account, raw| match event {
            Account::Deposited { amount } if *amount > 100 => Some(format!("big-{}", raw.stream)),
            _ => Some(format!("small-{}", raw.stream)),
        })
        .handle(move |_event, raw, ctx| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((ctx.stream().to_string(), raw.id));
                Ok(())
            }
        });
    assert_eq!(r.events(), ["Deposited", "Closed"]);
    let ids = deposits(&*f.store, "a", &[json!(500), json!(-1), json!(2)]).await;
    app(f.store.clone(), vec![r])
        .broker(broker_options("A"))
        .run_once()
        .await
        .unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("big-a".to_string(), ids[0]),
            ("small-a".to_string(), ids[2])
        ]
    );
    let bad = queue(
        &*f.store,
        &format!("{}routed", crate::broker::INVALID_TARGET_PREFIX),
    )
    .await;
    assert!(bad.blocked, "{bad:?}");
    assert_eq!((bad.next, bad.lag), (Some(ids[1]), 1));
    let error = bad.error.unwrap_or_default();
    assert!(
        error.contains("routed")
            && error.contains(&ids[1].to_string())
            && error.contains("invalid value"),
        "{error}"
    );
}
