//! Kit tests of time: deferred attempts (a handler's "not yet"), on the
//! store port and through the broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::support::{app, broker_options, claim, enqueue, fixed_backoff, ping, pings, queue};
use super::Backend;
use crate::app::Act;
use crate::queue::{Outcome, Settlement};
use crate::reaction::{HandlerError, Reaction};
use crate::store::Store;

const LEASE: Duration = Duration::from_secs(30);

/// A deferred queue keeps its position and is claimed by no broker before
/// its time on the store's clock, then by any; the deferral records no
/// error and no failed attempt.
pub async fn a_deferred_queue_is_not_claimed_before_its_time(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    let r = s
        .settle(&[Settlement::defer(&a.lease, None, Duration::from_secs(20))])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    let st = queue(s, "q").await;
    assert_eq!(
        (
            st.position,
            st.next,
            st.lag,
            st.retries,
            st.error.clone(),
            st.blocked
        ),
        (0, Some(ids[0]), 2, 0, None, false),
        "a deferral is not a failure: {st:?}"
    );
    assert!(st.retry_at.is_some(), "the next attempt time is stored");
    assert_eq!(st.lease_owner, None, "a deferral releases the lease");
    assert!(s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().is_empty());
    assert!(s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().is_empty());
    f.clock.advance(Duration::from_secs(10)).await;
    assert!(
        s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().is_empty(),
        "claimed before its time"
    );
    f.clock.advance(Duration::from_secs(11)).await;
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        (
            bb.lease.retries,
            bb.lease.position,
            super::support::ids(&bb)
        ),
        (0, 0, vec![ids[0], ids[1]])
    );
}

/// A deferral keeps the failed attempts counted so far (it adds none), and
/// starts the count again after progress, as an ack does.
pub async fn a_deferral_does_not_use_up_retries(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("q", ids[2])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    s.settle(&[Settlement::retry(&a.lease, None, Duration::ZERO, "boom")])
        .await
        .unwrap();
    for _ in 0..5 {
        let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
        assert_eq!(a.lease.retries, 1, "deferrals used up retries");
        s.settle(&[Settlement::defer(&a.lease, None, Duration::ZERO)])
            .await
            .unwrap();
        let st = queue(s, "q").await;
        assert_eq!((st.retries, st.error.clone()), (1, None), "{st:?}");
    }
    // Progress, then a deferral at the next event: the count starts again.
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    s.settle(&[Settlement::defer(&a.lease, Some(ids[0]), Duration::ZERO)])
        .await
        .unwrap();
    let st = queue(s, "q").await;
    assert_eq!(
        (st.position, st.next, st.retries),
        (ids[0], Some(ids[1]), 0),
        "{st:?}"
    );
    // A failure after deferrals counts from where the count was.
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    s.settle(&[Settlement::retry(&a.lease, None, Duration::ZERO, "again")])
        .await
        .unwrap();
    assert_eq!(queue(s, "q").await.retries, 1);
}

/// A deferred queue delays no other queue, and `next_due` reports when it
/// comes due.
pub async fn a_deferred_queue_does_not_delay_others(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("late", ids[0]), ("now", ids[1])]).await;
    let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(got.lease.stream, "late", "the oldest pending event first");
    s.settle(&[Settlement::defer(&got.lease, None, Duration::from_secs(60))])
        .await
        .unwrap();
    let other = s.claim(&claim("A", 5, 10, LEASE)).await.unwrap();
    assert_eq!(
        other
            .iter()
            .map(|b| b.lease.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["now"]
    );
    s.settle(&[Settlement::ack(&other[0].lease, ids[1])])
        .await
        .unwrap();
    let mine = [super::support::REACTION.to_string()];
    let d = s
        .next_due(&mine)
        .await
        .unwrap()
        .expect("the deferred queue is still pending");
    assert!(
        d > Duration::from_secs(55) && d <= Duration::from_secs(60),
        "{d:?}"
    );
}

/// Fencing: a deferral with a stale token changes nothing.
pub async fn a_stale_lease_cannot_defer(b: &impl Backend) {
    super::queues::assert_stale(
        b,
        Outcome::Defer {
            delay: Duration::from_secs(5),
        },
    )
    .await;
}

/// A handler that answers "not yet" is called again after its delay on the
/// store's clock, by any broker, with the same attempt number; the broker
/// counts a deferral, not a retry.
pub async fn a_deferring_handler_is_called_again_after_its_time(b: &impl Backend) {
    let f = b.open().await;
    let calls = Arc::new(Mutex::new(Vec::<(i64, u32)>::new()));
    let reaction = || {
        let calls = calls.clone();
        Reaction::on("Ping")
            .to_stream("q")
            .max_retries(0)
            .backoff(fixed_backoff(Duration::from_secs(1)))
            .handle(move |e, ctx| {
                let calls = calls.clone();
                async move {
                    let n = {
                        let mut c = calls.lock().unwrap_or_else(|p| p.into_inner());
                        c.push((e.id, ctx.attempt()));
                        c.len()
                    };
                    if n <= 3 {
                        return Err(HandlerError::defer_for(Duration::from_secs(20)));
                    }
                    Ok(())
                }
            })
    };
    let app_a = app(f.store.clone(), vec![reaction()]);
    let app_b = app(b.reopen(&f).await, vec![reaction()]);
    let e = ping(&*f.store, "a", json!({})).await;
    let stats = app_a.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!((stats.deferred, stats.retries, stats.events), (1, 0, 0));
    let q = queue(&*f.store, "q").await;
    assert_eq!(
        (q.position, q.retries, q.error, q.blocked),
        (0, 0, None, false)
    );
    app_b.broker(broker_options("B")).run_once().await.unwrap();
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "called again before its time"
    );
    for broker in ["B", "A", "B"] {
        f.clock.advance(Duration::from_secs(21)).await;
        let app = if broker == "A" { &app_a } else { &app_b };
        app.broker(broker_options(broker)).run_once().await.unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![(e.id, 1), (e.id, 1), (e.id, 1), (e.id, 1)],
        "deferrals are not failed attempts (max_retries 0 would have blocked)"
    );
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.position, q.retries, q.blocked), (e.id, 0, false));
}

/// Events before the deferred one in the batch are acknowledged; the ones
/// after it wait behind it (order is kept); a time already past is due at
/// once.
pub async fn a_deferral_keeps_the_batch_prefix_and_the_order(b: &impl Backend) {
    let f = b.open().await;
    let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
    let r = {
        let seen = seen.clone();
        Reaction::on("Ping").to_stream("q").handle(move |e, _ctx| {
            let seen = seen.clone();
            async move {
                let first = {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let first = !s.contains(&e.id);
                    s.push(e.id);
                    first
                };
                if e.data.get("later").is_some() && first {
                    return Err(HandlerError::defer_for(Duration::from_secs(30)));
                }
                if e.data.get("past").is_some() && first {
                    let past = chrono::Utc::now() - chrono::Duration::hours(1);
                    return Err(HandlerError::defer_until(past));
                }
                Ok(())
            }
        })
    };
    let app = app(f.store.clone(), vec![r]);
    let e1 = ping(&*f.store, "a", json!({})).await;
    let e2 = ping(&*f.store, "a", json!({"later": true})).await;
    let e3 = ping(&*f.store, "a", json!({"past": true})).await;
    let stats = app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(stats.deferred, 1);
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.position, q.next), (e1.id, Some(e2.id)), "{q:?}");
    assert_eq!(seen.lock().unwrap().clone(), vec![e1.id, e2.id]);
    f.clock.advance(Duration::from_secs(31)).await;
    let stats = app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(stats.deferred, 1, "e3 defers to a past time once");
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.position, q.lag), (e3.id, 0), "{q:?}");
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![e1.id, e2.id, e2.id, e3.id, e3.id]
    );
}

fn timer_app(store: Arc<dyn Store>, probe: &super::support::Probe) -> Act {
    Act::builder(store)
        .timers()
        .reaction(probe.reaction(Reaction::on("Due").to_stream("due")))
        .build()
        .expect("valid reactions")
}

/// The store's time now: the creation time of a fresh event.
async fn store_now(s: &dyn Store) -> chrono::DateTime<chrono::Utc> {
    ping(s, "clock", json!({})).await.meta.created
}

fn due(n: i64) -> crate::event::Message {
    crate::event::Message::new("Due", json!({ "n": n }))
}

async fn timer_events(s: &dyn Store, key: &str) -> Vec<String> {
    s.query(&crate::query::Query::new().stream(crate::timer::stream(key)))
        .await
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect()
}

/// A timer is deferred until its time on the store's clock, then fired
/// once, by any broker; its firing is an event in its stream, delivered to
/// the application's reactions; a fired key cannot be scheduled again.
pub async fn a_timer_fires_once_at_its_time_on_any_broker(b: &impl Backend) {
    use crate::timer::{Timer, TimerStatus};
    let f = b.open().await;
    let probe = super::support::Probe::new();
    let app_a = timer_app(f.store.clone(), &probe);
    let app_b = timer_app(b.reopen(&f).await, &probe);
    let t0 = store_now(&*f.store).await;
    let at = t0 + chrono::Duration::seconds(30);
    let sched = app_a.schedule(Timer::at("k", at, due(1))).await.unwrap();
    app_a.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(
        app_a.timer("k").await.unwrap(),
        TimerStatus::Pending {
            at,
            scheduled: sched.id
        }
    );
    app_b.broker(broker_options("B")).run_once().await.unwrap();
    assert!(probe.calls().is_empty(), "fired before its time");
    f.clock.advance(Duration::from_secs(31)).await;
    for _ in 0..2 {
        app_b.broker(broker_options("B")).run_once().await.unwrap();
        app_a.broker(broker_options("A")).run_once().await.unwrap();
    }
    let calls = probe.calls();
    assert_eq!(calls.len(), 1, "fired {} times: {calls:?}", calls.len());
    assert_eq!(
        timer_events(&*f.store, "k").await,
        vec![crate::timer::SCHEDULED, "Due"]
    );
    let fired = f
        .store
        .query(&crate::query::Query::new().stream(crate::timer::stream("k")))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(fired.data, json!({"n": 1}));
    assert_eq!(
        fired.meta.causation.event.as_ref().map(|c| c.id),
        Some(sched.id),
        "the firing names its schedule as its cause"
    );
    assert!(
        fired.meta.created >= at,
        "fired at {} before its time {at}",
        fired.meta.created
    );
    assert_eq!(
        app_a.timer("k").await.unwrap(),
        TimerStatus::Fired { event: fired.id }
    );
    match app_a.schedule(Timer::at("k", at, due(2))).await {
        Err(crate::Error::Rejected { reason, .. }) => {
            assert!(reason.contains("already fired"), "{reason}")
        }
        other => panic!("a fired key must not be scheduled again, got {other:?}"),
    }
}

/// A cancelled timer never fires, whether it was cancelled before a broker
/// saw it or while it waited; cancelling again, or an unknown key, is false.
pub async fn a_cancelled_timer_never_fires(b: &impl Backend) {
    use crate::timer::{Timer, TimerStatus};
    let f = b.open().await;
    let probe = super::support::Probe::new();
    let app = timer_app(f.store.clone(), &probe);
    let t0 = store_now(&*f.store).await;
    let at = t0 + chrono::Duration::seconds(30);
    app.schedule(Timer::at("waiting", at, due(1)))
        .await
        .unwrap();
    app.broker(broker_options("A")).run_once().await.unwrap();
    assert!(app.cancel_timer("waiting").await.unwrap());
    app.schedule(Timer::at("unseen", at, due(2))).await.unwrap();
    assert!(app.cancel_timer("unseen").await.unwrap());
    assert!(
        !app.cancel_timer("unseen").await.unwrap(),
        "cancelled twice"
    );
    assert!(!app.cancel_timer("never").await.unwrap());
    f.clock.advance(Duration::from_secs(31)).await;
    for _ in 0..2 {
        app.broker(broker_options("A")).run_once().await.unwrap();
    }
    assert!(probe.calls().is_empty(), "a cancelled timer fired");
    assert!(matches!(
        app.timer("waiting").await.unwrap(),
        TimerStatus::Cancelled { .. }
    ));
    assert_eq!(
        timer_events(&*f.store, "waiting").await,
        vec![crate::timer::SCHEDULED, crate::timer::CANCELLED]
    );
    // A cancelled key may be scheduled again, and then fires.
    let t1 = store_now(&*f.store).await;
    app.schedule(Timer::at("waiting", t1, due(3)))
        .await
        .unwrap();
    app.broker(broker_options("A")).run_once().await.unwrap();
    app.broker(broker_options("A")).run_once().await.unwrap();
    assert_eq!(probe.calls().len(), 1);
}

/// Scheduling a pending key again replaces its time and event: it fires
/// once, at the new time, with the new event, even when the new time is
/// earlier than the old one.
pub async fn a_rescheduled_timer_fires_once_at_its_new_time(b: &impl Backend) {
    use crate::timer::Timer;
    let f = b.open().await;
    let probe = super::support::Probe::new();
    let app = timer_app(f.store.clone(), &probe);
    let t0 = store_now(&*f.store).await;
    app.schedule(Timer::at("k", t0 + chrono::Duration::seconds(60), due(1)))
        .await
        .unwrap();
    app.broker(broker_options("A")).run_once().await.unwrap();
    app.schedule(Timer::at("k", t0 + chrono::Duration::seconds(10), due(2)))
        .await
        .unwrap();
    app.broker(broker_options("A")).run_once().await.unwrap();
    f.clock.advance(Duration::from_secs(11)).await;
    for _ in 0..2 {
        app.broker(broker_options("A")).run_once().await.unwrap();
    }
    assert_eq!(probe.calls().len(), 1, "the new time fires");
    f.clock.advance(Duration::from_secs(60)).await;
    for _ in 0..2 {
        app.broker(broker_options("A")).run_once().await.unwrap();
    }
    assert_eq!(probe.calls().len(), 1, "the replaced schedule fired too");
    let events = f
        .store
        .query(&crate::query::Query::new().stream(crate::timer::stream("k")))
        .await
        .unwrap();
    let fired: Vec<_> = events.iter().filter(|e| e.name == "Due").collect();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].data, json!({"n": 2}));
}

/// A broker that claimed a due timer and crashed (its lease lapses) leaves
/// it to another broker, which fires it once; a redelivered schedule (a
/// reset replays it) appends nothing more.
pub async fn a_timer_fires_once_after_a_broker_crash_and_a_replay(b: &impl Backend) {
    use crate::timer::Timer;
    let f = b.open().await;
    let probe = super::support::Probe::new();
    let app = timer_app(f.store.clone(), &probe);
    let t0 = store_now(&*f.store).await;
    let sched = app
        .schedule(Timer::at("k", t0 + chrono::Duration::seconds(5), due(1)))
        .await
        .unwrap();
    app.broker(broker_options("A")).run_once().await.unwrap();
    f.clock.advance(Duration::from_secs(6)).await;
    // Broker "crashed" claims the due timer and dies without settling.
    let claim = crate::queue::Claim {
        owner: "crashed".into(),
        queues: 10,
        events: 10,
        lease: LEASE,
        reactions: vec![crate::timer::REACTION.to_string()],
    };
    let taken = f.store.claim(&claim).await.unwrap();
    assert_eq!(taken.len(), 1, "the due timer is claimable");
    assert!(probe.calls().is_empty());
    f.clock.advance(LEASE + Duration::from_secs(1)).await;
    for _ in 0..2 {
        app.broker(broker_options("B")).run_once().await.unwrap();
    }
    assert_eq!(probe.calls().len(), 1, "{:?}", probe.calls());
    // Replay the schedule's queue: the timer has fired, nothing is appended.
    let queue_name = format!("{}#{}", crate::timer::stream("k"), sched.id);
    f.store.reset(&queue_name, 0).await.unwrap();
    for _ in 0..2 {
        app.broker(broker_options("B")).run_once().await.unwrap();
    }
    assert_eq!(
        timer_events(&*f.store, "k").await,
        vec![crate::timer::SCHEDULED, "Due"]
    );
    assert_eq!(probe.calls().len(), 1);
}

/// Timers must be turned on; their reaction's name is reserved; bad keys
/// and reserved event names are refused with a clear error.
pub async fn timers_refuse_what_they_cannot_keep(b: &impl Backend) {
    use crate::timer::Timer;
    let f = b.open().await;
    let off = Act::builder(f.store.clone()).build().unwrap();
    let t = Timer::after("k", Duration::from_secs(1), due(1));
    match off.schedule(t.clone()).await {
        Err(crate::Error::InvalidInput(m)) => assert!(m.contains(".timers()"), "{m}"),
        other => panic!("timers are off, got {other:?}"),
    }
    let clash = Act::builder(f.store.clone())
        .reaction(
            Reaction::on("X")
                .named(crate::timer::REACTION)
                .handle(|_, _| async { Ok(()) }),
        )
        .build();
    assert!(matches!(clash, Err(crate::Error::InvalidInput(_))));
    let probe = super::support::Probe::new();
    let app = timer_app(f.store.clone(), &probe);
    for bad in [
        Timer::after("", Duration::ZERO, due(1)),
        Timer::after(
            "k".repeat(crate::timer::MAX_KEY_BYTES + 1),
            Duration::ZERO,
            due(1),
        ),
        Timer::after(
            "k",
            Duration::ZERO,
            crate::event::Message::new(crate::timer::CANCELLED, json!({})),
        ),
        Timer::after(
            "k",
            Duration::ZERO,
            crate::event::Message::new("", json!({})),
        ),
    ] {
        assert!(
            matches!(
                app.schedule(bad.clone()).await,
                Err(crate::Error::InvalidInput(_))
            ),
            "{bad:?} must be refused"
        );
    }
    assert!(timer_events(&*f.store, "k").await.is_empty());
}
