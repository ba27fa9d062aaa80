//! Kit tests of the queue store port: checkpoint, claim, leases and fencing,
//! positions and watermarks, retry, block, unblock, reset.

use std::collections::HashSet;
use std::time::Duration;

use super::support::{claim, enqueue, enqueue_with_priority, pings, queue};
use super::Backend;
use crate::error::Error;
use crate::queue::{Outcome, QueueFilter, Rejection, Settlement, Work};

const LEASE: Duration = Duration::from_secs(30);
const PAST_LEASE: Duration = Duration::from_secs(31);

/// Correlation is compare-and-set on the checkpoint: a second broker that read
/// the same events writes nothing.
pub async fn enqueue_is_guarded_by_the_checkpoint(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    assert_eq!(s.checkpoint().await.unwrap(), 0);
    let w = |e: i64| Work {
        stream: "q".into(),
        event: e,
        priority: 0,
    };
    assert_eq!(
        s.enqueue(&[w(ids[0]), w(ids[1])], 0, ids[1]).await.unwrap(),
        ids[1]
    );
    // A late broker that read from 0 too: nothing written, checkpoint reported.
    assert_eq!(
        s.enqueue(
            &[Work {
                stream: "late".into(),
                event: ids[2],
                priority: 0
            }],
            0,
            ids[2]
        )
        .await
        .unwrap(),
        ids[1]
    );
    assert!(s
        .queues(&QueueFilter {
            stream: Some("late".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.checkpoint().await.unwrap(), ids[1]);
    assert_eq!(queue(s, "q").await.lag, 2);
    // Moving the checkpoint without work is allowed (events nobody reacts to).
    assert_eq!(s.enqueue(&[], ids[1], ids[2]).await.unwrap(), ids[2]);
}

/// The same (queue, event) enqueued twice is one pending event.
pub async fn enqueueing_the_same_work_twice_is_a_no_op(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    let w = |e: i64| Work {
        stream: "q".into(),
        event: e,
        priority: 0,
    };
    s.enqueue(&[w(ids[0]), w(ids[0])], 0, ids[0]).await.unwrap();
    s.enqueue(&[w(ids[0]), w(ids[1])], ids[0], ids[1])
        .await
        .unwrap();
    let q = queue(s, "q").await;
    assert_eq!((q.lag, q.head, q.next), (2, ids[1], Some(ids[0])));
    let got = s.claim(&claim("x", 10, 10, LEASE)).await.unwrap();
    assert_eq!(got[0].events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
}

/// A queue leased by one broker is not given to another.
pub async fn claim_is_exclusive_between_two_brokers(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    enqueue(
        s,
        &[
            ("q1", ids[0]),
            ("q2", ids[1]),
            ("q3", ids[2]),
            ("q1", ids[3]),
        ],
    )
    .await;
    let a = s.claim(&claim("A", 2, 10, LEASE)).await.unwrap();
    let bb = s.claim(&claim("B", 10, 10, LEASE)).await.unwrap();
    let sa: HashSet<_> = a.iter().map(|x| x.lease.stream.clone()).collect();
    let sb: HashSet<_> = bb.iter().map(|x| x.lease.stream.clone()).collect();
    assert_eq!(sa.len(), 2);
    assert_eq!(sb.len(), 1);
    assert!(sa.is_disjoint(&sb), "A {sa:?} and B {sb:?} share a queue");
    assert!(s
        .claim(&claim("C", 10, 10, LEASE))
        .await
        .unwrap()
        .is_empty());
    for x in a.iter().chain(&bb) {
        assert_eq!(
            x.lease.owner,
            if sa.contains(&x.lease.stream) {
                "A"
            } else {
                "B"
            }
        );
        let st = queue(s, &x.lease.stream).await;
        assert_eq!(st.lease_owner.as_deref(), Some(x.lease.owner.as_str()));
        assert_eq!(st.token, x.lease.token);
    }
}

/// Many brokers claiming at once never get the same queue.
pub async fn concurrent_claims_never_share_a_queue(b: &impl Backend) {
    let f = b.open().await;
    let ids = pings(&*f.store, "a", 60).await;
    let names: Vec<String> = (0..60).map(|i| format!("q{i}")).collect();
    let work: Vec<(&str, i64)> = names
        .iter()
        .map(String::as_str)
        .zip(ids.iter().copied())
        .collect();
    enqueue(&*f.store, &work).await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let s = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                for x in s
                    .claim(&claim(&format!("w{w}"), 3, 10, LEASE))
                    .await
                    .unwrap()
                {
                    got.push(x.lease.stream);
                }
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "a queue was claimed twice: {all:?}"
    );
    assert_eq!(all.len(), 60, "every queue was claimable once");
}

/// After the lease time on the store's clock, another broker takes the queue
/// with a higher token.
pub async fn an_expired_lease_is_handed_to_another_broker(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert!(s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().is_empty());
    f.clock.advance(PAST_LEASE).await;
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap();
    assert_eq!(bb.len(), 1, "the expired lease was not handed over");
    assert_eq!(bb[0].lease.stream, "q");
    assert!(bb[0].lease.token > a.lease.token, "the token must increase");
    assert_eq!(
        bb[0].events[0].id, ids[0],
        "the new owner starts where A started"
    );
}

async fn taken_over(
    b: &impl Backend,
) -> (super::Fixture, crate::queue::Batch, crate::queue::Batch) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("q", ids[2])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    f.clock.advance(PAST_LEASE).await;
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().remove(0);
    (f, a, bb)
}

async fn assert_stale(b: &impl Backend, outcome: Outcome) {
    let (f, a, bb) = taken_over(b).await;
    let s = &*f.store;
    let before = queue(s, "q").await;
    let mut stale = Settlement::ack(&a.lease, a.events[1].id);
    stale.outcome = outcome;
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
    // The live owner's write works.
    let r = s
        .settle(&[Settlement::ack(&bb.lease, bb.events[2].id)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    assert_eq!(queue(s, "q").await.position, bb.events[2].id);
}

/// Fencing: an ack with a stale token is rejected.
pub async fn a_stale_lease_cannot_ack(b: &impl Backend) {
    assert_stale(b, Outcome::Ack).await;
}

/// Fencing: a retry with a stale token is rejected.
pub async fn a_stale_lease_cannot_retry(b: &impl Backend) {
    assert_stale(
        b,
        Outcome::Retry {
            delay: Duration::from_secs(1),
            error: "x".into(),
        },
    )
    .await;
}

/// Fencing: a block with a stale token is rejected.
pub async fn a_stale_lease_cannot_block(b: &impl Backend) {
    assert_stale(b, Outcome::Block { error: "x".into() }).await;
}

/// An expired lease cannot ack even when nobody took the queue.
pub async fn an_expired_lease_cannot_ack(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    f.clock.advance(PAST_LEASE).await;
    let r = s
        .settle(&[Settlement::ack(&a.lease, ids[0])])
        .await
        .unwrap();
    assert!(matches!(r[0], Err(Rejection::Expired { .. })), "{r:?}");
    assert_eq!(queue(s, "q").await.position, 0);
}

/// Compare-and-set: a settlement whose `from` is not the queue's position is
/// rejected even with the right token.
pub async fn an_ack_checks_the_position_it_read(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    let mut forged = Settlement::ack(&a.lease, ids[1]);
    forged.from = ids[0];
    let r = s.settle(&[forged]).await.unwrap();
    assert!(
        matches!(r[0], Err(Rejection::Moved { expected, actual: 0, .. }) if expected == ids[0]),
        "{r:?}"
    );
    assert_eq!(queue(s, "q").await.position, 0);
    assert_eq!(
        s.settle(&[Settlement::ack(&a.lease, ids[1])])
            .await
            .unwrap(),
        vec![Ok(())]
    );
}

/// Renewal extends the lease on the store's clock: nobody takes it over.
pub async fn a_renewed_lease_is_not_taken_over(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    f.clock.advance(LEASE * 2 / 3).await;
    let r = s.renew(&[a.lease.reference()], LEASE).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    f.clock.advance(LEASE * 2 / 3).await;
    assert!(
        s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().is_empty(),
        "a renewed lease was taken over"
    );
    assert_eq!(
        s.settle(&[Settlement::ack(&a.lease, ids[0])])
            .await
            .unwrap(),
        vec![Ok(())]
    );
}

/// A lease that expired cannot be renewed: its holder must stop.
pub async fn an_expired_lease_cannot_be_renewed(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    f.clock.advance(PAST_LEASE).await;
    let r = s.renew(&[a.lease.reference()], LEASE).await.unwrap();
    assert!(matches!(r[0], Err(Rejection::Expired { .. })), "{r:?}");
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().remove(0);
    let r = s
        .renew(&[a.lease.reference(), bb.lease.reference()], LEASE)
        .await
        .unwrap();
    assert!(matches!(r[0], Err(Rejection::Stale { .. })), "{r:?}");
    assert!(r[1].is_ok());
}

/// An ack moves the position, clears retries and frees the queue.
pub async fn ack_advances_the_position(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("q", ids[2])]).await;
    let a = s.claim(&claim("A", 1, 2, LEASE)).await.unwrap().remove(0);
    assert_eq!(a.events.len(), 2);
    s.settle(&[Settlement::ack(&a.lease, ids[1])])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let q = queue(s, "q").await;
    assert_eq!(
        (q.position, q.next, q.lag, q.retries),
        (ids[1], Some(ids[2]), 1, 0)
    );
    assert_eq!(q.lease_owner, None);
    let next = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(next.lease.position, ids[1]);
    assert_eq!(
        next.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    s.settle(&[Settlement::ack(&next.lease, ids[2])])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let q = queue(s, "q").await;
    assert_eq!(
        (q.position, q.next, q.lag, q.head),
        (ids[2], None, 0, ids[2])
    );
}

/// Watermarks: a queue with nothing pending is never behind, and events of
/// other queues neither count against it nor make it claimable.
pub async fn idle_queues_are_never_reported_behind(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("idle", ids[0]), ("busy", ids[1])]).await;
    let mut got = s.claim(&claim("A", 10, 10, LEASE)).await.unwrap();
    got.sort_by(|x, y| x.lease.stream.cmp(&y.lease.stream));
    let acks: Vec<Settlement> = got
        .iter()
        .map(|x| Settlement::ack(&x.lease, x.events.last().unwrap().id))
        .collect();
    assert!(s.settle(&acks).await.unwrap().iter().all(Result::is_ok));
    let more = pings(s, "a", 200).await;
    let work: Vec<(&str, i64)> = more.iter().map(|&e| ("busy", e)).collect();
    enqueue(s, &work).await;
    let idle = queue(s, "idle").await;
    assert_eq!(
        (idle.lag, idle.next, idle.position, idle.head),
        (0, None, ids[0], ids[0])
    );
    let pending = s
        .queues(&QueueFilter {
            pending: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|q| q.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["busy"]
    );
    let claimed = s.claim(&claim("B", 10, 1000, LEASE)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease.stream, "busy");
    assert_eq!(
        claimed[0].events.len(),
        200,
        "fetch reads only the queue's own events"
    );
}

/// Lag counts exactly the events enqueued after the position.
pub async fn lag_is_exact(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 12).await;
    // q gets every third event; others go elsewhere.
    let work: Vec<(&str, i64)> = ids
        .iter()
        .enumerate()
        .map(|(i, &e)| (if i % 3 == 0 { "q" } else { "other" }, e))
        .collect();
    enqueue(s, &work).await;
    assert_eq!(queue(s, "q").await.lag, 4);
    assert_eq!(queue(s, "other").await.lag, 8);
    let mut q = None;
    for x in s.claim(&claim("A", 10, 1, LEASE)).await.unwrap() {
        if x.lease.stream == "q" {
            q = Some(x);
        }
    }
    let q = q.expect("q claimed");
    s.settle(&[Settlement::ack(&q.lease, ids[0])])
        .await
        .unwrap();
    let st = queue(s, "q").await;
    assert_eq!((st.lag, st.position, st.next), (3, ids[0], Some(ids[3])));
}

/// Priority first, whatever the age of the pending events.
pub async fn higher_priority_queues_are_claimed_first(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue_with_priority(s, &[("low", ids[0])], 0).await;
    enqueue_with_priority(s, &[("high", ids[1])], 10).await;
    enqueue_with_priority(s, &[("mid", ids[2])], 5).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap();
        order.push(got[0].lease.stream.clone());
    }
    assert_eq!(order, vec!["high", "mid", "low"]);
}

/// Among equal priorities, the queue whose next event is oldest goes first.
pub async fn claim_serves_the_oldest_pending_event_first(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    enqueue(
        s,
        &[("c", ids[0]), ("b", ids[1]), ("a", ids[2]), ("c", ids[3])],
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap();
        order.push(got[0].lease.stream.clone());
    }
    assert_eq!(order, vec!["c", "b", "a"]);
}

/// A claim returns at most `events` events per queue, in id order.
pub async fn a_claim_is_bounded_to_its_batch_size(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 25).await;
    let work: Vec<(&str, i64)> = ids.iter().map(|&e| ("q", e)).collect();
    enqueue(s, &work).await;
    let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        got.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..10].to_vec()
    );
}

/// Starvation bound at the store: a hot queue with a huge backlog holds one
/// lease with one bounded batch; every other queue is claimable meanwhile.
pub async fn a_hot_queue_holds_one_lease_and_one_batch(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let hot = pings(s, "hot", 2000).await;
    let work: Vec<(&str, i64)> = hot.iter().map(|&e| ("hot", e)).collect();
    enqueue(s, &work).await;
    let cold = pings(s, "cold", 1000).await;
    let names: Vec<String> = (0..1000).map(|i| format!("cold-{i}")).collect();
    let work: Vec<(&str, i64)> = names
        .iter()
        .map(String::as_str)
        .zip(cold.iter().copied())
        .collect();
    enqueue(s, &work).await;
    let first = s.claim(&claim("A", 1, 100, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        first.lease.stream, "hot",
        "the oldest pending event goes first"
    );
    assert_eq!(first.events.len(), 100);
    let rest = s.claim(&claim("B", 5000, 100, LEASE)).await.unwrap();
    assert_eq!(
        rest.len(),
        1000,
        "every other queue is claimable while hot is leased"
    );
    assert!(rest
        .iter()
        .all(|x| x.lease.stream != "hot" && x.events.len() == 1));
}

/// A retry keeps the queue out of every broker's claims until the delay has
/// passed on the store's clock, then hands the event back with its count.
pub async fn retry_is_scheduled_on_the_store_clock_for_every_broker(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(a.lease.retries, 0);
    let delay = Duration::from_secs(20);
    let r = s
        .settle(&[Settlement::retry(&a.lease, a.lease.position, delay, "boom")])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    let st = queue(s, "q").await;
    assert_eq!(
        (st.retries, st.error.as_deref(), st.blocked),
        (1, Some("boom"), false)
    );
    assert!(st.retry_at.is_some());
    assert!(s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().is_empty());
    assert!(s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().is_empty());
    f.clock.advance(Duration::from_secs(10)).await;
    assert!(s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().is_empty());
    f.clock.advance(Duration::from_secs(11)).await;
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!((bb.lease.retries, bb.events[0].id), (1, ids[0]));
    s.settle(&[Settlement::ack(&bb.lease, ids[0])])
        .await
        .unwrap();
    let st = queue(s, "q").await;
    assert_eq!((st.retries, st.retry_at, st.error), (0, None, None));
}

/// Events that succeeded before a failure stay acknowledged; the count starts
/// at 1 for the event that failed.
pub async fn partial_progress_is_kept_on_retry(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 5).await;
    let work: Vec<(&str, i64)> = ids.iter().map(|&e| ("q", e)).collect();
    enqueue(s, &work).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    s.settle(&[Settlement::retry(&a.lease, ids[0], Duration::ZERO, "first")])
        .await
        .unwrap();
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!((a.lease.position, a.lease.retries), (ids[0], 1));
    // Two more succeed, the fourth event fails: progress kept, count restarts.
    s.settle(&[Settlement::retry(
        &a.lease,
        ids[2],
        Duration::ZERO,
        "fourth",
    )])
    .await
    .unwrap();
    let st = queue(s, "q").await;
    assert_eq!(
        (st.position, st.retries, st.next),
        (ids[2], 1, Some(ids[3]))
    );
}

/// A block stops the queue with its error; no broker claims it; it is not due.
pub async fn block_stops_the_queue_and_keeps_the_error(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("q", ids[2])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    s.settle(&[Settlement::block(&a.lease, ids[0], "poisoned event")])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let st = queue(s, "q").await;
    assert!(st.blocked);
    assert_eq!((st.position, st.next, st.lag), (ids[0], Some(ids[1]), 2));
    assert_eq!(st.error.as_deref(), Some("poisoned event"));
    f.clock.advance(Duration::from_secs(3600)).await;
    assert!(s
        .claim(&claim("B", 10, 10, LEASE))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.next_due().await.unwrap(), None);
    let blocked = s
        .queues(&QueueFilter {
            blocked: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(blocked.len(), 1);
}

/// Unblock resumes at the event that failed, with retries cleared and a new
/// token; the old lease is fenced off.
pub async fn unblock_resumes_at_the_failed_event(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("other", ids[1])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(a.lease.stream, "q");
    s.settle(&[Settlement::block(&a.lease, ids[0], "bad")])
        .await
        .unwrap();
    let before = queue(s, "q").await;
    let done = s
        .unblock(&["q".to_string(), "other".to_string(), "missing".to_string()])
        .await
        .unwrap();
    assert_eq!(
        done,
        vec!["q".to_string()],
        "only blocked queues are unblocked"
    );
    let st = queue(s, "q").await;
    assert!(!st.blocked);
    assert_eq!((st.retries, st.error.as_deref()), (0, None));
    assert!(st.token > before.token, "unblock increases the token");
    let mut got = s.claim(&claim("B", 10, 10, LEASE)).await.unwrap();
    got.retain(|x| x.lease.stream == "q");
    assert_eq!(got[0].events[0].id, ids[1]);
    assert_eq!(got[0].lease.retries, 0);
}

/// Reset moves the position (back to replay, forward to skip), clears
/// retries and block, and fences off the previous lease.
pub async fn reset_moves_the_position_and_fences_the_old_lease(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    let work: Vec<(&str, i64)> = ids.iter().map(|&e| ("q", e)).collect();
    enqueue(s, &work).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    s.settle(&[Settlement::ack(&a.lease, ids[3])])
        .await
        .unwrap();
    let a = queue(s, "q").await;
    assert_eq!(a.lag, 0);
    let st = s.reset("q", ids[1]).await.unwrap();
    assert_eq!((st.position, st.lag, st.next), (ids[1], 2, Some(ids[2])));
    let held = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        held.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[2..].to_vec()
    );
    let st = s.reset("q", 0).await.unwrap();
    assert_eq!((st.position, st.lag), (0, 4));
    let r = s
        .settle(&[Settlement::ack(&held.lease, ids[3])])
        .await
        .unwrap();
    assert!(matches!(r[0], Err(Rejection::Stale { .. })), "{r:?}");
    assert_eq!(queue(s, "q").await.position, 0);
    let st = s.reset("q", ids[3]).await.unwrap();
    assert_eq!((st.position, st.lag, st.next), (ids[3], 0, None));
}

/// Reset names a queue that must exist.
pub async fn reset_of_an_unknown_queue_is_an_error(b: &impl Backend) {
    let f = b.open().await;
    match f.store.reset("nope", 0).await {
        Err(Error::UnknownQueue(q)) => assert_eq!(q, "nope"),
        other => panic!("expected UnknownQueue, got {other:?}"),
    }
}

/// Release frees a queue at once, position unchanged.
pub async fn release_gives_the_queue_back(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        s.release(&[a.lease.reference()]).await.unwrap(),
        vec![Ok(())]
    );
    let st = queue(s, "q").await;
    assert_eq!((st.position, st.lease_owner), (0, None));
    let bb = s.claim(&claim("B", 1, 10, LEASE)).await.unwrap();
    assert_eq!(bb.len(), 1);
    let r = s.release(&[a.lease.reference()]).await.unwrap();
    assert!(matches!(r[0], Err(Rejection::Stale { .. })), "{r:?}");
}

/// `next_due` tells a waiting broker when to look again.
pub async fn next_due_reports_when_work_becomes_claimable(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    assert_eq!(s.next_due().await.unwrap(), None, "nothing pending");
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    assert_eq!(s.next_due().await.unwrap(), Some(Duration::ZERO));
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    let d = s
        .next_due()
        .await
        .unwrap()
        .expect("leased work is still pending");
    assert!(d > Duration::from_secs(25) && d <= LEASE, "{d:?}");
    s.settle(&[Settlement::retry(&a.lease, 0, Duration::from_secs(5), "x")])
        .await
        .unwrap();
    let d = s
        .next_due()
        .await
        .unwrap()
        .expect("retrying work is pending");
    assert!(
        d > Duration::from_secs(3) && d <= Duration::from_secs(5),
        "{d:?}"
    );
}
