//! Kit tests of time: deferred attempts (a handler's "not yet"), on the
//! store port and through the broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::support::{broker_options, claim, enqueue, fixed_backoff, ping, pings, queue};
use super::Backend;
use crate::app::Act;
use crate::queue::{Outcome, Rejection, Settlement};
use crate::reaction::{HandlerError, Reaction};
use crate::store::Store;

const LEASE: Duration = Duration::from_secs(30);

fn app(store: Arc<dyn Store>, reactions: Vec<Reaction>) -> Act {
    Act::builder(store)
        .reactions(reactions)
        .build()
        .expect("valid reactions")
}

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
        (bb.lease.retries, bb.lease.position, ids_of(&bb)),
        (0, 0, vec![ids[0], ids[1]])
    );
}

fn ids_of(b: &crate::queue::Batch) -> Vec<i64> {
    b.events.iter().map(|p| p.event.id).collect()
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
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    f.clock.advance(LEASE + Duration::from_secs(1)).await;
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().remove(0);
    let before = queue(s, "q").await;
    let stale = Settlement::defer(&a.lease, None, Duration::from_secs(5));
    assert!(matches!(stale.outcome, Outcome::Defer { .. }));
    let r = s.settle(&[stale]).await.unwrap();
    assert!(
        matches!(r[0], Err(Rejection::Stale { .. })),
        "a stale lease must be rejected, got {r:?}"
    );
    assert_eq!(
        queue(s, "q").await,
        before,
        "a rejected write changes nothing"
    );
    let r = s
        .settle(&[Settlement::ack(&bb.lease, ids[0])])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
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
