//! Kit tests of the queue store port: subscriptions and correlation steps,
//! claim, leases and fencing, items per reaction, positions and watermarks,
//! retry, block, unblock, reset and replays, retirement, listings.

use std::collections::HashSet;
use std::time::Duration;

use super::support::{
    checkpoint, claim, enqueue, enqueue_for, enqueue_with_priority, ids, pings, queue, subscribe,
    REACTION,
};
use super::Backend;
use crate::error::Error;
use crate::queue::{Claim, Outcome, QueueFilter, Rejection, Settlement, Work};
use crate::subscription::{Correlation, Subscription};

const LEASE: Duration = Duration::from_secs(30);
const PAST_LEASE: Duration = Duration::from_secs(31);

fn item(stream: &str, event: i64, reaction: &str) -> Work {
    Work {
        stream: stream.into(),
        event,
        reaction: reaction.into(),
        priority: 0,
    }
}

fn step(reactions: &[&str], from: i64, to: i64, work: Vec<Work>) -> Correlation {
    Correlation {
        reactions: reactions.iter().map(|r| r.to_string()).collect(),
        replay: None,
        from,
        to,
        work,
    }
}

fn claim_for(owner: &str, reactions: &[&str]) -> Claim {
    Claim {
        reactions: reactions.iter().map(|r| r.to_string()).collect(),
        ..claim(owner, 10, 10, LEASE)
    }
}

/// Correlation is compare-and-set per reaction: a second broker that read
/// the same events writes nothing.
pub async fn enqueue_is_guarded_by_the_checkpoint(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    subscribe(s, &[REACTION]).await;
    assert_eq!(checkpoint(s, REACTION).await, 0);
    let r = s
        .enqueue(&step(
            &[REACTION],
            0,
            ids[1],
            vec![item("q", ids[0], REACTION), item("q", ids[1], REACTION)],
        ))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[1])]);
    assert_eq!(r.moved, vec![true], "this call moved it");
    // A late broker that read from 0 too: nothing written, checkpoint reported.
    let r = s
        .enqueue(&step(
            &[REACTION],
            0,
            ids[2],
            vec![item("late", ids[2], REACTION)],
        ))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[1])]);
    assert_eq!(r.moved, vec![false], "another call had moved it");
    assert!(s
        .queues(&QueueFilter {
            stream: Some("late".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());
    assert_eq!(checkpoint(s, REACTION).await, ids[1]);
    assert_eq!(queue(s, "q").await.lag, 2);
    // Moving the checkpoint without work is allowed (events nobody reacts to).
    let r = s
        .enqueue(&step(&[REACTION], ids[1], ids[2], vec![]))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[2])]);
    // An unknown reaction is reported as such and moves nothing.
    let r = s
        .enqueue(&step(
            &["nobody"],
            0,
            ids[2],
            vec![item("x", ids[2], "nobody")],
        ))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![None]);
    // Backwards is a caller's bug.
    assert!(matches!(
        s.enqueue(&step(&[REACTION], ids[2], ids[1], vec![])).await,
        Err(Error::InvalidInput(_))
    ));
}

/// Two brokers read the same page and enqueue it: the second finds the
/// cursors where its own step ends, and is told it moved none of them (so
/// it can leave that cursor to the first instead of reading every page
/// again), and adds nothing.
pub async fn the_second_of_two_identical_steps_is_told_it_moved_nothing(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    subscribe(s, &["x", "y"]).await;
    let page = step(
        &["x", "y"],
        0,
        ids[1],
        vec![item("q", ids[0], "x"), item("q", ids[1], "y")],
    );
    let first = s.enqueue(&page).await.unwrap();
    assert_eq!(first.positions, vec![Some(ids[1]); 2]);
    assert_eq!(first.moved, vec![true, true], "the first call moves both");
    let second = s.enqueue(&page).await.unwrap();
    assert_eq!(
        second.positions,
        vec![Some(ids[1]); 2],
        "the cursors are where the second step ends too"
    );
    assert_eq!(second.moved, vec![false, false], "but it moved neither");
    assert_eq!(queue(s, "q").await.lag, 2, "and added nothing");
}

/// One step moves each of its reactions only if that one is at `from`; the
/// work of the others is dropped.
pub async fn a_correlation_step_moves_only_reactions_at_its_start(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    subscribe(s, &["x", "y"]).await;
    // Another broker moved `y` already.
    s.enqueue(&step(&["y"], 0, ids[0], vec![item("qy", ids[0], "y")]))
        .await
        .unwrap();
    let r = s
        .enqueue(&step(
            &["x", "y"],
            0,
            ids[1],
            vec![
                item("qx", ids[0], "x"),
                item("qx", ids[1], "x"),
                item("qy", ids[1], "y"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[1]), Some(ids[0])]);
    assert_eq!(r.moved, vec![true, false]);
    assert_eq!(queue(s, "qx").await.lag, 2);
    assert_eq!(
        queue(s, "qy").await.lag,
        1,
        "y's work of a step it did not move is dropped"
    );
}

/// Subscribing records a reaction once, with its start as its checkpoint;
/// later registrations keep its progress.
pub async fn subscriptions_keep_their_start_and_progress(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    let sub = |name: &str, start: i64, target: Option<&str>| Subscription {
        name: name.into(),
        events: vec!["Ping".into()],
        target: target.map(str::to_string),
        start,
    };
    let got = s
        .subscribe(&[sub("late", ids[1], None), sub("all", 0, Some("q"))])
        .await
        .unwrap();
    assert_eq!(
        got.iter()
            .map(|g| (g.name.as_str(), g.start, g.checkpoint))
            .collect::<Vec<_>>(),
        vec![("all", 0, 0), ("late", ids[1], ids[1])]
    );
    assert_eq!(got[0].target.as_deref(), Some("q"));
    s.enqueue(&step(&["all"], 0, ids[2], vec![])).await.unwrap();
    // Registering again (another broker, a restart) keeps the progress, even
    // with another start.
    let again = s.subscribe(&[sub("all", ids[0], Some("q"))]).await.unwrap();
    let all = again.iter().find(|g| g.name == "all").unwrap();
    assert_eq!((all.start, all.checkpoint), (0, ids[2]));
    assert!(all.seen >= all.created);
    assert_eq!(
        s.subscriptions().await.unwrap().len(),
        2,
        "one broker's registration lists them all"
    );
}

/// The same (queue, event, reaction) enqueued twice is one item; two
/// reactions of one event on one queue are one pending event with both.
pub async fn enqueueing_the_same_work_twice_is_a_no_op(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    subscribe(s, &["x", "y"]).await;
    let r = s
        .enqueue(&step(
            &["x", "y"],
            0,
            ids[0],
            vec![
                item("q", ids[0], "x"),
                item("q", ids[0], "x"),
                item("q", ids[0], "y"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[0]); 2]);
    s.enqueue(&step(
        &["x"],
        ids[0],
        ids[1],
        vec![item("q", ids[0], "x"), item("q", ids[1], "x")],
    ))
    .await
    .unwrap();
    let q = queue(s, "q").await;
    assert_eq!((q.lag, q.head, q.next), (2, ids[1], Some(ids[0])));
    let got = s.claim(&claim_for("o", &["x", "y"])).await.unwrap();
    assert_eq!(ids_of(&got[0]), ids);
    let mut first = got[0].events[0].reactions.clone();
    first.sort();
    assert_eq!(first, vec!["x", "y"]);
    assert_eq!(got[0].events[1].reactions, vec!["x"]);
}

fn ids_of(b: &crate::queue::Batch) -> Vec<i64> {
    ids(b)
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

/// `settle_and_claim` claims after it settled: the queue it just
/// acknowledged is leased again at once, with its next events and a new
/// token, and the position moved.
pub async fn settle_and_claim_claims_after_it_settled(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("q", ids[2])]).await;
    let a = s.claim(&claim("A", 1, 1, LEASE)).await.unwrap().remove(0);
    assert_eq!(event_ids(&a), vec![ids[0]]);
    let out = s
        .settle_and_claim(
            &[Settlement::ack(&a.lease, ids[0])],
            &claim("A", 1, 1, LEASE),
        )
        .await;
    let settled = out.settled.expect("the settle half ran");
    assert_eq!(settled, vec![Ok(())], "the ack was applied");
    let got = out.claimed.expect("the claim half ran");
    assert_eq!(
        got.len(),
        1,
        "the acknowledged queue was claimable again: {got:?}"
    );
    assert_eq!(got[0].lease.stream, "q");
    assert_eq!(got[0].lease.position, ids[0], "the claim saw the ack");
    assert!(got[0].lease.token > a.lease.token, "{got:?}");
    assert_eq!(event_ids(&got[0]), vec![ids[1]]);
    // The old lease is fenced off; the new one settles.
    let r = s
        .settle(&[Settlement::ack(&a.lease, ids[1])])
        .await
        .unwrap();
    assert!(matches!(r[0], Err(Rejection::Stale { .. })), "{r:?}");
    let r = s
        .settle(&[Settlement::ack(&got[0].lease, ids[1])])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    assert_eq!(queue(s, "q").await.position, ids[1]);
}

/// `settle_and_claim` keeps claim order across the settle: after the
/// highest-priority queue is acknowledged, the claim in the same call takes
/// it again (it is still first), never the next queue in line; the same for
/// the queue with the oldest pending event.
pub async fn settle_and_claim_keeps_claim_order(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 6).await;
    enqueue_with_priority(s, &[("low", ids[0]), ("low", ids[2])], 0).await;
    enqueue_with_priority(s, &[("high", ids[1]), ("high", ids[3])], 10).await;
    let mut order = Vec::new();
    let mut held = s.claim(&claim("A", 1, 1, LEASE)).await.unwrap();
    while let Some(batch) = held.pop() {
        order.push(batch.lease.stream.clone());
        let last = *event_ids(&batch).last().expect("a batch holds an event");
        let out = s
            .settle_and_claim(
                &[Settlement::ack(&batch.lease, last)],
                &claim("A", 1, 1, LEASE),
            )
            .await;
        assert_eq!(out.settled.expect("the settle half ran"), vec![Ok(())]);
        held = out.claimed.expect("the claim half ran");
        assert!(held.len() <= 1, "{held:?}");
    }
    assert_eq!(order, vec!["high", "high", "low", "low"]);
    // Equal priorities: the oldest pending event first, across the settle.
    enqueue(s, &[("c", ids[4]), ("d", ids[5])]).await;
    let first = s.claim(&claim("A", 1, 1, LEASE)).await.unwrap().remove(0);
    assert_eq!(first.lease.stream, "c");
    let out = s
        .settle_and_claim(
            &[Settlement::ack(&first.lease, ids[4])],
            &claim("A", 2, 1, LEASE),
        )
        .await;
    assert_eq!(out.settled.expect("the settle half ran"), vec![Ok(())]);
    let got: Vec<String> = out
        .claimed
        .expect("the claim half ran")
        .into_iter()
        .map(|b| b.lease.stream)
        .collect();
    assert_eq!(got, vec!["d"], "c is empty after its ack; d was next");
}

/// Each half of `settle_and_claim` reports its own result: a rejected
/// settlement changes nothing and the claim still runs; a block it applies
/// keeps its queue out of the claim; an empty settle only claims and a
/// claim of no queue only settles.
pub async fn settle_and_claim_reports_each_half(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    enqueue(
        s,
        &[("p", ids[0]), ("q", ids[1]), ("r", ids[2]), ("r", ids[3])],
    )
    .await;
    let p = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(p.lease.stream, "p");
    let mut stale = p.lease.clone();
    stale.token -= 1;
    let out = s
        .settle_and_claim(
            &[Settlement::ack(&stale, ids[0])],
            &claim("A", 1, 10, LEASE),
        )
        .await;
    let settled = out.settled.expect("the settle half ran");
    assert!(
        matches!(settled[..], [Err(Rejection::Stale { .. })]),
        "{settled:?}"
    );
    let q = out.claimed.expect("the claim half ran");
    assert_eq!(
        q.iter()
            .map(|b| b.lease.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["q"],
        "p is still leased: the rejected ack changed nothing"
    );
    assert_eq!(queue(s, "p").await.position, 0);
    // Block p and ack q, and claim everything claimable in the same call.
    let out = s
        .settle_and_claim(
            &[
                Settlement::ack(&q[0].lease, ids[1]),
                Settlement::block(&p.lease, None, "poisoned event"),
            ],
            &claim("A", 10, 10, LEASE),
        )
        .await;
    assert_eq!(
        out.settled.expect("the settle half ran"),
        vec![Ok(()), Ok(())]
    );
    let got = out.claimed.expect("the claim half ran");
    assert_eq!(
        got.iter()
            .map(|b| b.lease.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["r"],
        "p is blocked, q is empty: {got:?}"
    );
    assert!(queue(s, "p").await.blocked);
    assert_eq!(queue(s, "q").await.position, ids[1]);
    // A claim of no queue only settles.
    let out = s
        .settle_and_claim(
            &[Settlement::ack(&got[0].lease, ids[3])],
            &claim("A", 0, 10, LEASE),
        )
        .await;
    assert_eq!(out.settled.expect("the settle half ran"), vec![Ok(())]);
    assert!(out.claimed.expect("no claim ran").is_empty());
    assert_eq!(queue(s, "r").await.position, ids[3]);
    // An empty settle only claims: nothing is left but the blocked p.
    s.unblock(&["p".to_string()]).await.unwrap();
    let out = s.settle_and_claim(&[], &claim("A", 10, 10, LEASE)).await;
    assert!(out.settled.expect("nothing to settle").is_empty());
    let got = out.claimed.expect("the claim half ran");
    assert_eq!(
        got.iter()
            .map(|b| b.lease.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["p"]
    );
    assert_eq!(event_ids(&got[0]), vec![ids[0]]);
}

fn event_ids(b: &crate::queue::Batch) -> Vec<i64> {
    b.events.iter().map(|p| p.event.id).collect()
}

/// After the lease time on the store's clock, another broker takes the queue
/// with a higher token, and the lease that ended without a settlement counts
/// as a failed attempt.
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
        bb[0].events[0].event.id, ids[0],
        "the new owner starts where A started"
    );
    assert_eq!((bb[0].lease.retries, bb[0].lease.lapses), (1, 1));
}

/// Promise 6: every lease that ends without a settlement is a failed
/// attempt of the first pending event, on the store's clock; a release is
/// not; a settlement with progress starts the count again.
pub async fn an_expired_lease_counts_as_a_failed_attempt(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1])]).await;
    for n in 1..=3u32 {
        let _ = s
            .claim(&claim("crashing", 1, 10, LEASE))
            .await
            .unwrap()
            .remove(0);
        f.clock.advance(PAST_LEASE).await;
        let st = queue(s, "q").await;
        assert_eq!(st.retries, n - 1, "counted when the next claim finds it");
        if n == 3 {
            break;
        }
    }
    let held = s
        .claim(&claim("next", 1, 10, LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((held.lease.retries, held.lease.lapses), (3, 3));
    let st = queue(s, "q").await;
    assert_eq!(st.retries, 3);
    let error = st.error.unwrap_or_default();
    assert!(
        error.contains("expired without a settlement") && error.contains("crashing"),
        "{error}"
    );
    // A release gives the lease back without a failed attempt.
    s.release(&[held.lease.reference()]).await.unwrap();
    let again = s
        .claim(&claim("next", 1, 10, LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((again.lease.retries, again.lease.lapses), (3, 3));
    // Progress starts the count again (the walk goes on, one event at a
    // time, until past the lapsed batch).
    assert!(again.lease.suspect);
    s.settle(&[Settlement::ack(&again.lease, ids[0])])
        .await
        .unwrap();
    let st = queue(s, "q").await;
    assert_eq!((st.retries, st.position, st.error), (0, ids[0], None));
    let last = s
        .claim(&claim("next", 1, 10, LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (ids_of(&last), last.lease.retries, last.lease.suspect),
        (vec![ids[1]], 0, true)
    );
    s.settle(&[Settlement::ack(&last.lease, ids[1])])
        .await
        .unwrap();
    let st = queue(s, "q").await;
    assert_eq!((st.retries, st.error, st.lag), (0, None, 0));
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

/// A settlement with `outcome` from a lease another broker took over is
/// rejected and changes nothing; the live owner's ack works.
pub(super) async fn assert_stale(b: &impl Backend, outcome: Outcome) {
    let (f, a, bb) = taken_over(b).await;
    let s = &*f.store;
    let before = queue(s, "q").await;
    let mut stale = Settlement::ack(&a.lease, a.events[1].event.id);
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
    // The live owner's write works (it got one event: the queue walks
    // through the lapsed batch one event at a time).
    assert_eq!(bb.events.len(), 1);
    let r = s
        .settle(&[Settlement::ack(&bb.lease, bb.events[0].event.id)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    assert_eq!(queue(s, "q").await.position, bb.events[0].event.id);
}

/// After a lease lapsed, the queue is handed out one event at a time until
/// an ack passes the last event of the lapsed batch (a handler that crashed
/// its process then fails on the exact event), then in full batches again;
/// such leases say they are suspect. The lapse counts against the first
/// event; each ack starts the count again, so a second lapse lands on the
/// event that was out.
pub async fn a_lapsed_batch_is_walked_one_event_at_a_time(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 6).await;
    let work: Vec<(&str, i64)> = ids.iter().map(|&e| ("q", e)).collect();
    enqueue(s, &work).await;
    let first = s
        .claim(&claim("crashed", 1, 4, LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((ids_of(&first).len(), first.lease.suspect), (4, false));
    f.clock.advance(PAST_LEASE).await;
    let mut walked = Vec::new();
    loop {
        let got = s
            .claim(&claim("next", 1, 10, LEASE))
            .await
            .unwrap()
            .remove(0);
        if !got.lease.suspect {
            assert_eq!(
                ids_of(&got),
                ids[4..].to_vec(),
                "past the lapsed batch: full batches again"
            );
            assert_eq!(
                (got.lease.retries, got.lease.lapses),
                (0, 0),
                "and a fresh count"
            );
            s.settle(&[Settlement::ack(&got.lease, ids[5])])
                .await
                .unwrap();
            break;
        }
        assert_eq!(got.events.len(), 1, "one event at a time while suspect");
        let first_of_batch = walked.is_empty();
        assert_eq!(
            (got.lease.retries, got.lease.lapses),
            if first_of_batch { (1, 1) } else { (0, 0) },
            "the lapse counts against the first event; each ack starts the count again"
        );
        walked.push(got.events[0].event.id);
        s.settle(&[Settlement::ack(&got.lease, got.events[0].event.id)])
            .await
            .unwrap();
        let st = queue(s, "q").await;
        assert_eq!(
            (st.retries, st.error.clone()),
            (0, None),
            "an ack is progress: {st:?}"
        );
    }
    assert_eq!(walked, ids[..4].to_vec());
    // A lapse while walking counts against the event that was out.
    let more = pings(s, "a", 3).await;
    enqueue(s, &[("q", more[0]), ("q", more[1]), ("q", more[2])]).await;
    let _ = s
        .claim(&claim("crash-1", 1, 10, LEASE))
        .await
        .unwrap()
        .remove(0);
    f.clock.advance(PAST_LEASE).await;
    let one = s.claim(&claim("ok", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        (ids_of(&one), one.lease.retries, one.lease.suspect),
        (vec![more[0]], 1, true)
    );
    s.settle(&[Settlement::ack(&one.lease, more[0])])
        .await
        .unwrap();
    let _ = s
        .claim(&claim("crash-2", 1, 10, LEASE))
        .await
        .unwrap()
        .remove(0);
    f.clock.advance(PAST_LEASE).await;
    let again = s.claim(&claim("ok", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(
        (
            ids_of(&again),
            again.lease.retries,
            again.lease.lapses,
            again.lease.suspect
        ),
        (vec![more[1]], 1, 1, true),
        "the second crash counts against the event that was out"
    );
    let st = s.reset("q", 0).await.unwrap();
    assert_eq!(st.retries, 0, "a reset ends the walk");
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
    assert_eq!(ids_of(&next), vec![ids[2]]);
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
        .map(|x| Settlement::ack(&x.lease, x.events.last().unwrap().event.id))
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

/// Lag counts exactly the pending events.
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

/// State reported to operators is exact whatever the order work arrives in:
/// `next` is the oldest pending event, `head` the newest ever enqueued.
pub async fn state_is_exact_after_out_of_order_enqueues(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 6).await;
    subscribe(s, &["x", "y"]).await;
    s.enqueue(&step(
        &["x"],
        0,
        ids[5],
        vec![item("q", ids[5], "x"), item("q", ids[3], "x")],
    ))
    .await
    .unwrap();
    let st = queue(s, "q").await;
    assert_eq!((st.next, st.head, st.lag), (Some(ids[3]), ids[5], 2));
    s.enqueue(&step(
        &["y"],
        0,
        ids[5],
        vec![item("q", ids[1], "y"), item("q", ids[3], "y")],
    ))
    .await
    .unwrap();
    let st = queue(s, "q").await;
    assert_eq!(
        (st.next, st.head, st.lag),
        (Some(ids[1]), ids[5], 3),
        "{st:?}"
    );
}

/// Priority first, whatever the age of the pending events.
pub async fn higher_priority_queues_are_claimed_first(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    enqueue_with_priority(s, &[("low", ids[0])], 0).await;
    enqueue_with_priority(s, &[("high", ids[1])], 10).await;
    enqueue_with_priority(s, &[("mid", ids[2])], 5).await;
    enqueue_with_priority(s, &[("negative", ids[3])], -5).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap();
        order.push(got[0].lease.stream.clone());
    }
    assert_eq!(order, vec!["high", "mid", "low", "negative"]);
}

/// A queue keeps the highest priority ever enqueued for it, negative ones
/// included.
pub async fn the_highest_priority_ever_enqueued_is_kept(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    enqueue_with_priority(s, &[("neg", ids[0])], -7).await;
    assert_eq!(queue(s, "neg").await.priority, -7);
    enqueue_with_priority(s, &[("neg", ids[1])], -9).await;
    assert_eq!(queue(s, "neg").await.priority, -7);
    enqueue_with_priority(s, &[("neg", ids[2])], -3).await;
    assert_eq!(queue(s, "neg").await.priority, -3);
    enqueue_with_priority(s, &[("neg", ids[3])], -20).await;
    assert_eq!(queue(s, "neg").await.priority, -3);
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

/// Claim order holds when thousands of queues come due at the same moment
/// (a burst of lease expiries): priority, then the oldest pending event.
pub async fn claim_order_holds_when_thousands_come_due_together(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let n = 3000;
    let ids = pings(s, "a", n).await;
    let names: Vec<String> = (0..n).map(|i| format!("q{i:05}")).collect();
    // Every third queue has priority 1; the events are in reverse name order.
    let mut high = Vec::new();
    let mut low = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let e = ids[n - 1 - i];
        if i % 3 == 0 {
            high.push((name.as_str(), e));
        } else {
            low.push((name.as_str(), e));
        }
    }
    enqueue_with_priority(s, &low, 0).await;
    enqueue_with_priority(s, &high, 1).await;
    // All leased at once, then all expire together.
    let mut leased = 0;
    while leased < n {
        let got = s.claim(&claim("crowd", 500, 1, LEASE)).await.unwrap();
        assert!(
            !got.is_empty(),
            "only {leased} of {n} queues were claimable"
        );
        leased += got.len();
    }
    f.clock.advance(PAST_LEASE).await;
    let mut order: Vec<(i32, i64, String)> = Vec::new();
    loop {
        let got = s.claim(&claim("next", 250, 1, LEASE)).await.unwrap();
        if got.is_empty() {
            break;
        }
        for b in got {
            let st_priority = if high.iter().any(|(q, _)| *q == b.lease.stream) {
                1
            } else {
                0
            };
            order.push((st_priority, b.events[0].event.id, b.lease.stream));
        }
    }
    assert_eq!(order.len(), n);
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert!(
        order == sorted,
        "claims came out of order (first differences: {:?})",
        order
            .iter()
            .zip(&sorted)
            .filter(|(a, b)| a != b)
            .take(3)
            .collect::<Vec<_>>()
    );
}

/// A claim returns at most `events` events per queue, in id order.
pub async fn a_claim_is_bounded_to_its_batch_size(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 25).await;
    let work: Vec<(&str, i64)> = ids.iter().map(|&e| ("q", e)).collect();
    enqueue(s, &work).await;
    let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(ids_of(&got), ids[..10].to_vec());
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

/// Promise 1 across a rolling deploy: a broker never leases a queue whose
/// next item is for a reaction it lacks; the queue waits for a broker that
/// has it, and a batch stops before the first such event.
pub async fn a_claim_leaves_work_for_reactions_the_broker_lacks(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    subscribe(s, &["old", "new"]).await;
    s.enqueue(&step(
        &["old", "new"],
        0,
        ids[3],
        vec![
            item("mixed", ids[0], "old"),
            item("mixed", ids[1], "new"),
            item("mixed", ids[2], "old"),
            item("fresh", ids[3], "new"),
        ],
    ))
    .await
    .unwrap();
    // A broker of the old version: it takes `mixed` up to the event it
    // cannot run, and leaves `fresh` alone.
    let got = s.claim(&claim_for("v1", &["old"])).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].lease.stream.as_str(), ids_of(&got[0])),
        ("mixed", vec![ids[0]])
    );
    let fresh = queue(s, "fresh").await;
    assert_eq!(
        (fresh.waiting.as_deref(), fresh.lease_owner),
        (Some("new"), None)
    );
    s.settle(&[Settlement::ack(&got[0].lease, ids[0])])
        .await
        .unwrap();
    // Now `mixed` waits too, and the old broker gets nothing.
    assert!(s
        .claim(&claim_for("v1", &["old"]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(queue(s, "mixed").await.waiting.as_deref(), Some("new"));
    assert_eq!(
        s.next_due(&["old".to_string()]).await.unwrap(),
        None,
        "nothing is due for the old broker"
    );
    // A broker of the new version takes both, from where they wait.
    let mut got = s.claim(&claim_for("v2", &["old", "new"])).await.unwrap();
    got.sort_by(|a, b| a.lease.stream.cmp(&b.lease.stream));
    assert_eq!(
        got.iter()
            .map(|b| (b.lease.stream.as_str(), ids_of(b)))
            .collect::<Vec<_>>(),
        vec![("fresh", vec![ids[3]]), ("mixed", vec![ids[1], ids[2]])]
    );
    assert_eq!(queue(s, "mixed").await.waiting, None);
}

/// An item for an event below the position (a reaction added later that
/// backfills into a queue others already moved on) is still delivered, and
/// next: pending items go in id order.
pub async fn a_late_item_below_the_position_is_delivered_next(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    enqueue_for(s, "early", &[("q", ids[0]), ("q", ids[2])], 0).await;
    let a = s
        .claim(&claim_for("o", &["early"]))
        .await
        .unwrap()
        .remove(0);
    s.settle(&[Settlement::ack(&a.lease, ids[2])])
        .await
        .unwrap();
    enqueue_for(s, "early", &[("q", ids[3])], 0).await;
    // The new reaction's history arrives below the position.
    enqueue_for(s, "later", &[("q", ids[0]), ("q", ids[1])], 0).await;
    let st = queue(s, "q").await;
    assert_eq!(
        (st.position, st.next, st.lag, st.head),
        (ids[2], Some(ids[0]), 3, ids[3])
    );
    let got = s
        .claim(&claim_for("o", &["early", "later"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(ids_of(&got), vec![ids[0], ids[1], ids[3]]);
    assert_eq!(got.events[0].reactions, vec!["later"]);
    s.settle(&[Settlement::retry(
        &got.lease,
        Some(ids[1]),
        Duration::ZERO,
        "x",
    )])
    .await
    .unwrap();
    let st = queue(s, "q").await;
    assert_eq!(
        (st.position, st.next, st.lag, st.retries),
        (ids[2], Some(ids[3]), 1, 1),
        "acking late items never moves the position back"
    );
}

/// A settlement removes only what its batch could have held: an item
/// enqueued after the claim (even for an older event) stays pending.
pub async fn a_settlement_keeps_items_enqueued_after_its_claim(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue_for(s, "early", &[("q", ids[1]), ("q", ids[2])], 0).await;
    let a = s
        .claim(&claim_for("o", &["early", "later"]))
        .await
        .unwrap()
        .remove(0);
    enqueue_for(s, "later", &[("q", ids[0]), ("q", ids[2])], 0).await;
    s.settle(&[Settlement::ack(&a.lease, ids[2])])
        .await
        .unwrap();
    let st = queue(s, "q").await;
    assert_eq!(
        (st.position, st.next, st.lag),
        (ids[2], Some(ids[0]), 2),
        "{st:?}"
    );
    let got = s
        .claim(&claim_for("o", &["early", "later"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(ids_of(&got), vec![ids[0], ids[2]]);
    assert!(got.events.iter().all(|p| p.reactions == vec!["later"]));
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
        .settle(&[Settlement::retry(&a.lease, None, delay, "boom")])
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
    assert_eq!((bb.lease.retries, bb.events[0].event.id), (1, ids[0]));
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
    s.settle(&[Settlement::retry(
        &a.lease,
        Some(ids[0]),
        Duration::ZERO,
        "first",
    )])
    .await
    .unwrap();
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!((a.lease.position, a.lease.retries), (ids[0], 1));
    // Two more succeed, the fourth event fails: progress kept, count restarts.
    s.settle(&[Settlement::retry(
        &a.lease,
        Some(ids[2]),
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
    s.settle(&[Settlement::block(&a.lease, Some(ids[0]), "poisoned event")])
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
    assert_eq!(s.next_due(&[REACTION.to_string()]).await.unwrap(), None);
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
/// token; the old lease is fenced off. Each queue is reported once.
pub async fn unblock_resumes_at_the_failed_event(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("q", ids[0]), ("q", ids[1]), ("other", ids[1])]).await;
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(a.lease.stream, "q");
    s.settle(&[Settlement::block(&a.lease, Some(ids[0]), "bad")])
        .await
        .unwrap();
    let before = queue(s, "q").await;
    let done = s
        .unblock(&[
            "q".to_string(),
            "other".to_string(),
            "missing".to_string(),
            "q".to_string(),
        ])
        .await
        .unwrap();
    assert_eq!(
        done,
        vec!["q".to_string()],
        "only blocked queues are unblocked, each once"
    );
    let st = queue(s, "q").await;
    assert!(!st.blocked);
    assert_eq!((st.retries, st.error.as_deref()), (0, None));
    assert!(st.token > before.token, "unblock increases the token");
    let mut got = s.claim(&claim("B", 10, 10, LEASE)).await.unwrap();
    got.retain(|x| x.lease.stream == "q");
    assert_eq!(got[0].events[0].event.id, ids[1]);
    assert_eq!(got[0].lease.retries, 0);
}

/// Reset drops the queue's items, moves it (back to replay, forward to
/// skip), fences off the previous lease, and records a replay for every
/// reaction that may target it; the queue delivers nothing past a replay's
/// position until the replay has caught up.
pub async fn reset_records_replays_and_holds_delivery_until_they_catch_up(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 4).await;
    let work: Vec<(&str, i64)> = ids.iter().map(|&e| ("q", e)).collect();
    enqueue(s, &work).await;
    let held = s.claim(&claim("A", 1, 2, LEASE)).await.unwrap().remove(0);
    let st = s.reset("q", ids[1]).await.unwrap();
    assert_eq!(
        (st.position, st.lag, st.next, st.replay),
        (ids[1], 0, None, Some(ids[1]))
    );
    let r = s
        .settle(&[Settlement::ack(&held.lease, ids[1])])
        .await
        .unwrap();
    assert!(matches!(r[0], Err(Rejection::Stale { .. })), "{r:?}");
    let replays = s.replays().await.unwrap();
    assert_eq!(replays.len(), 1);
    assert_eq!(
        (
            replays[0].stream.as_str(),
            replays[0].reaction.as_str(),
            replays[0].position,
            replays[0].until
        ),
        ("q", REACTION, ids[1], ids[3])
    );
    // A replay step, like a broker's: one page of one event.
    let r = s
        .enqueue(&Correlation {
            reactions: vec![REACTION.into()],
            replay: Some("q".into()),
            from: ids[1],
            to: ids[2],
            work: vec![
                item("q", ids[2], REACTION),
                item("elsewhere", ids[2], REACTION),
            ],
        })
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[2])]);
    assert!(
        s.queues(&QueueFilter {
            stream: Some("elsewhere".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty(),
        "a replay step writes to its queue only"
    );
    let st = queue(s, "q").await;
    assert_eq!((st.lag, st.replay), (1, Some(ids[2])));
    // Work that arrives meanwhile (live correlation) waits behind the replay.
    let live = pings(s, "a", 1).await[0];
    enqueue(s, &[("q", live)]).await;
    let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(ids_of(&got), vec![ids[2]]);
    s.settle(&[Settlement::ack(&got.lease, ids[2])])
        .await
        .unwrap();
    assert!(
        s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().is_empty(),
        "nothing past the replay"
    );
    let r = s
        .enqueue(&Correlation {
            reactions: vec![REACTION.into()],
            replay: Some("q".into()),
            from: ids[2],
            to: ids[3],
            work: vec![item("q", ids[3], REACTION)],
        })
        .await
        .unwrap();
    assert_eq!(r.positions, vec![Some(ids[3])]);
    assert!(
        s.replays().await.unwrap().is_empty(),
        "a replay that reached its end is over"
    );
    let st = queue(s, "q").await;
    assert_eq!((st.lag, st.replay), (2, None));
    let got = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    assert_eq!(ids_of(&got), vec![ids[3], live]);
    // A finished replay reports no position.
    let r = s
        .enqueue(&Correlation {
            reactions: vec![REACTION.into()],
            replay: Some("q".into()),
            from: ids[3],
            to: ids[3],
            work: vec![],
        })
        .await
        .unwrap();
    assert_eq!(r.positions, vec![None]);
}

/// After a reset, items for events at or below its position that arrive
/// later (a reaction still backfilling) are dropped: the operator skipped
/// them.
pub async fn items_below_a_reset_floor_are_dropped(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    enqueue(s, &[("q", ids[2])]).await;
    subscribe(s, &["slow"]).await;
    s.reset("q", ids[1]).await.unwrap();
    s.enqueue(&step(
        &["slow"],
        0,
        ids[2],
        vec![
            item("q", ids[0], "slow"),
            item("q", ids[1], "slow"),
            item("q", ids[2], "slow"),
        ],
    ))
    .await
    .unwrap();
    let st = queue(s, "q").await;
    assert_eq!((st.lag, st.next), (1, Some(ids[2])));
}

/// Reset names a queue that exists or that a reaction can target; its
/// position is an event id of the log.
pub async fn reset_of_an_unknown_queue_is_an_error(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    match s.reset("nope", 0).await {
        Err(Error::UnknownQueue(q)) => assert_eq!(q, "nope"),
        other => panic!("expected UnknownQueue, got {other:?}"),
    }
    let ids = pings(s, "a", 2).await;
    s.subscribe(&[Subscription {
        name: "fixed".into(),
        events: vec!["Ping".into()],
        target: Some("only".into()),
        start: 0,
    }])
    .await
    .unwrap();
    s.enqueue(&step(&["fixed"], 0, ids[1], vec![]))
        .await
        .unwrap();
    assert!(
        matches!(s.reset("nope", 0).await, Err(Error::UnknownQueue(_))),
        "a static reaction targets its own queue only"
    );
    // A queue that never had work, but that a reaction targets: replayed.
    let st = s.reset("only", 0).await.unwrap();
    assert_eq!(
        (st.stream.as_str(), st.position, st.replay),
        ("only", 0, Some(0))
    );
    assert_eq!(s.replays().await.unwrap().len(), 1);
}

/// A reset past the log's head (or below 0) is refused and changes nothing.
pub async fn reset_past_the_head_is_refused(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    enqueue(s, &[("q", ids[0])]).await;
    let before = queue(s, "q").await;
    let head = s.head().await.unwrap();
    for bad in [head + 1, i64::MAX, -1, i64::MIN] {
        match s.reset("q", bad).await {
            Err(Error::InvalidInput(m)) => assert!(m.contains(&bad.to_string()), "{m}"),
            other => panic!("reset to {bad} must be refused, got {other:?}"),
        }
    }
    assert_eq!(queue(s, "q").await, before);
    assert!(
        s.reset("q", head).await.is_ok(),
        "the head itself is a position"
    );
}

/// Retiring a reaction drops its pending items everywhere, reports how
/// many, ends its replays, and stops queues waiting for it from waiting.
pub async fn retire_drops_pending_work_and_reports_it(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    subscribe(s, &["keep", "gone"]).await;
    s.enqueue(&step(
        &["keep", "gone"],
        0,
        ids[2],
        vec![
            item("shared", ids[0], "gone"),
            item("shared", ids[1], "keep"),
            item("solo", ids[2], "gone"),
            item("solo2", ids[1], "gone"),
        ],
    ))
    .await
    .unwrap();
    assert!(s
        .claim(&claim_for("v2", &["keep"]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(queue(s, "shared").await.waiting.as_deref(), Some("gone"));
    match s.retire(&["gone".to_string(), "missing".to_string()]).await {
        Err(Error::UnknownReaction(n)) => assert_eq!(n, "missing"),
        other => panic!("expected UnknownReaction, got {other:?}"),
    }
    assert_eq!(
        queue(s, "shared").await.lag,
        2,
        "a failed retire changes nothing"
    );
    let r = s.retire(&["gone".to_string()]).await.unwrap();
    assert_eq!((r[0].dropped, r[0].queues, r[0].newly), (3, 3, true));
    let shared = queue(s, "shared").await;
    assert_eq!(
        (shared.lag, shared.next, shared.waiting),
        (1, Some(ids[1]), None)
    );
    assert_eq!(queue(s, "solo").await.lag, 0);
    let got = s.claim(&claim_for("v2", &["keep"])).await.unwrap();
    assert_eq!(got.len(), 1);
    // Retired stays retired: no work, no moves, and a second retire drops nothing.
    let r = s
        .enqueue(&step(&["gone"], ids[2], ids[2], vec![]))
        .await
        .unwrap();
    assert_eq!(r.positions, vec![None]);
    let again = s.retire(&["gone".to_string()]).await.unwrap();
    assert_eq!((again[0].dropped, again[0].newly), (0, false));
    let subs = s.subscriptions().await.unwrap();
    assert!(subs.iter().any(|x| x.name == "gone" && x.retired.is_some()));
    // Registering it again does not bring it back.
    subscribe(s, &["gone"]).await;
    assert!(s
        .subscriptions()
        .await
        .unwrap()
        .iter()
        .any(|x| x.name == "gone" && x.retired.is_some()));
}

/// The pending items of each reaction over every queue: counted once per
/// item however often it is enqueued, still pending while its queue is
/// blocked, gone when acknowledged, retired or dropped by a reset; listed
/// in byte order (`B` before `a`), reactions with none left out.
pub async fn pending_items_are_counted_per_reaction(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 6).await;
    assert_eq!(s.pending_by_reaction().await.unwrap(), vec![]);
    subscribe(s, &["a", "B", "z", "idle"]).await;
    let work = vec![
        item("q1", ids[0], "a"),
        item("q1", ids[0], "B"),
        item("q1", ids[1], "a"),
        item("q2", ids[2], "B"),
        item("q2", ids[3], "a"),
        item("q3", ids[4], "z"),
    ];
    s.enqueue(&step(&["a", "B", "z", "idle"], 0, ids[4], work.clone()))
        .await
        .unwrap();
    let counts = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    };
    assert_eq!(
        s.pending_by_reaction().await.unwrap(),
        counts(&[("B", 2), ("a", 3), ("z", 1)])
    );
    // The same items again, from a later step: nothing is counted twice.
    s.enqueue(&step(&["a", "B", "z"], ids[4], ids[5], work))
        .await
        .unwrap();
    assert_eq!(
        s.pending_by_reaction().await.unwrap(),
        counts(&[("B", 2), ("a", 3), ("z", 1)])
    );
    let all = claim_for("A", &["a", "B", "z", "idle"]);
    let got = s.claim(&all).await.unwrap();
    assert_eq!(got.len(), 3);
    let lease = |q: &str| {
        got.iter()
            .find(|x| x.lease.stream == q)
            .map(|x| x.lease.clone())
            .unwrap_or_else(|| panic!("{q} claimed"))
    };
    s.settle(&[
        // q1's first event (both of its items) is acknowledged.
        Settlement::ack(&lease("q1"), ids[0]),
        // q2 is blocked at its first event: its items stay pending.
        Settlement::block(&lease("q2"), None, "boom"),
        Settlement::ack(&lease("q3"), ids[4]),
    ])
    .await
    .unwrap()
    .into_iter()
    .for_each(|r| assert_eq!(r, Ok(())));
    assert!(queue(s, "q2").await.blocked);
    assert_eq!(
        s.pending_by_reaction().await.unwrap(),
        counts(&[("B", 1), ("a", 2)])
    );
    s.retire(&["B".to_string()]).await.unwrap();
    assert_eq!(s.pending_by_reaction().await.unwrap(), counts(&[("a", 2)]));
    // A reset drops the queue's pending items (its replay brings them back).
    s.reset("q1", ids[0]).await.unwrap();
    assert_eq!(s.pending_by_reaction().await.unwrap(), counts(&[("a", 1)]));
}

/// The store-wide gauges ([`crate::metrics::sample`]) per reaction: its
/// pending items, and the queues waiting for a broker that has it (here,
/// a broker of an older version that lacks `new` claimed).
pub async fn sample_reports_pending_and_waiting_per_reaction(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 2).await;
    subscribe(s, &["old", "new"]).await;
    s.enqueue(&step(
        &["old", "new"],
        0,
        ids[1],
        vec![
            item("q1", ids[0], "old"),
            item("q1", ids[0], "new"),
            item("q2", ids[1], "old"),
        ],
    ))
    .await
    .unwrap();
    let got = s.claim(&claim_for("v1", &["old"])).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|b| b.lease.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["q2"]
    );
    assert_eq!(queue(s, "q1").await.waiting.as_deref(), Some("new"));
    let m = crate::metrics::sample(s, &[]).await.unwrap();
    let named = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    };
    assert_eq!(m.reaction_lag, named(&[("new", 1), ("old", 2)]));
    assert_eq!(m.queues_waiting, named(&[("new", 1), ("old", 0)]));
    assert_eq!((m.events_pending, m.queues_pending), (2, 2));
    assert_eq!((m.queues_blocked, m.correlation_lag), (0, 0));
    assert_eq!(m.head, ids[1]);
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
    assert_eq!(bb[0].lease.retries, 0, "a release is not a failed attempt");
    let r = s.release(&[a.lease.reference()]).await.unwrap();
    assert!(matches!(r[0], Err(Rejection::Stale { .. })), "{r:?}");
}

/// `next_due` tells a waiting broker when to look again.
pub async fn next_due_reports_when_work_becomes_claimable(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let mine = [REACTION.to_string()];
    assert_eq!(s.next_due(&mine).await.unwrap(), None, "nothing pending");
    let ids = pings(s, "a", 1).await;
    enqueue(s, &[("q", ids[0])]).await;
    assert_eq!(s.next_due(&mine).await.unwrap(), Some(Duration::ZERO));
    let a = s.claim(&claim("A", 1, 10, LEASE)).await.unwrap().remove(0);
    let d = s
        .next_due(&mine)
        .await
        .unwrap()
        .expect("leased work is still pending");
    assert!(d > Duration::from_secs(25) && d <= LEASE, "{d:?}");
    s.settle(&[Settlement::retry(
        &a.lease,
        None,
        Duration::from_secs(5),
        "x",
    )])
    .await
    .unwrap();
    let d = s
        .next_due(&mine)
        .await
        .unwrap()
        .expect("retrying work is pending");
    assert!(
        d > Duration::from_secs(3) && d <= Duration::from_secs(5),
        "{d:?}"
    );
}

/// Listings are in byte order (never a collation's), their limit is a
/// prefix of that order, and a cursor pages through them.
pub async fn queues_are_listed_in_byte_order_and_paged(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let names = ["b", "B", "a", "_x", "a-2", "a-10", "é", "z", "Z9", "a b"];
    let ids = pings(s, "a", names.len()).await;
    let work: Vec<(&str, i64)> = names.iter().copied().zip(ids.iter().copied()).collect();
    enqueue(s, &work).await;
    let mut want: Vec<&str> = names.to_vec();
    want.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    let all = s.queues(&QueueFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|q| q.stream.as_str()).collect::<Vec<_>>(),
        want
    );
    let first = s
        .queues(&QueueFilter {
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|q| q.stream.as_str()).collect::<Vec<_>>(),
        want[..3].to_vec()
    );
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .queues(&QueueFilter {
                after: after.clone(),
                limit: Some(4),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|q| q.stream.clone());
        paged.extend(page.into_iter().map(|q| q.stream));
    }
    assert_eq!(
        paged,
        want.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    // Claim tie-breaks (same priority, same next event) are byte order too.
    let ids = pings(s, "t", 1).await;
    subscribe(s, &["tie"]).await;
    let cp = checkpoint(s, "tie").await;
    s.enqueue(&step(
        &["tie"],
        cp,
        ids[0],
        vec![
            item("tB", ids[0], "tie"),
            item("ta", ids[0], "tie"),
            item("tA", ids[0], "tie"),
        ],
    ))
    .await
    .unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = s
            .claim(&Claim {
                queues: 1,
                ..claim_for("o", &["tie"])
            })
            .await
            .unwrap();
        order.push(got[0].lease.stream.clone());
    }
    assert_eq!(order, vec!["tA", "tB", "ta"]);
}
