//! The walk of a lapsed batch lives in the file: a process that dies holding
//! a lease leaves the queue to be walked one event at a time by the next
//! process; the lapse records why, and each ack inside the walk is progress
//! (the count starts again).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use act::clock::ManualClock;
use act::queue::lapse_error;
use act::{
    Append, Batch, Claim, Correlation, EventStore, Message, QueueFilter, QueueState, QueueStore,
    Settlement, Subscription, Work,
};
use act_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

async fn open(path: &Path, clock: &ManualClock) -> SqliteStore {
    let options = SqliteOptions {
        clock: Arc::new(clock.clone()),
        watch_every: None,
        ..Default::default()
    };
    SqliteStore::open_with(path, options).await.unwrap()
}

/// Appends `n` events and enqueues them all to `q` for reaction `r`, whose
/// checkpoint is at `from`; returns their ids.
async fn work(s: &SqliteStore, from: i64, n: usize) -> Vec<i64> {
    let messages = (0..n)
        .map(|i| Message::new("Ping", json!({ "n": i })))
        .collect();
    let ids: Vec<i64> = s
        .append(Append::new("a", messages))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    s.enqueue(&Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from,
        to: ids[n - 1],
        work: ids
            .iter()
            .map(|&event| Work {
                stream: "q".into(),
                event,
                reaction: "r".into(),
                priority: 0,
            })
            .collect(),
    })
    .await
    .unwrap();
    ids
}

async fn claim(s: &SqliteStore, owner: &str) -> Batch {
    let mut got = s
        .claim(&Claim {
            owner: owner.into(),
            queues: 1,
            events: 10,
            lease: LEASE,
            reactions: vec!["r".into()],
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "a batch for {owner}");
    got.remove(0)
}

fn ids(b: &Batch) -> Vec<i64> {
    b.events.iter().map(|p| p.event.id).collect()
}

async fn state(s: &SqliteStore) -> QueueState {
    s.queues(&QueueFilter::default()).await.unwrap().remove(0)
}

#[tokio::test]
async fn a_lapsed_batch_is_walked_by_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("act.db");
    let clock = ManualClock::new();
    let crashed = open(&path, &clock).await;
    crashed
        .subscribe(&[Subscription {
            name: "r".into(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        }])
        .await
        .unwrap();
    let e = work(&crashed, 0, 4).await;
    let first = claim(&crashed, "crashed").await;
    assert_eq!((ids(&first), first.lease.suspect), (e.clone(), false));
    // The process dies holding the lease.
    crashed.close().await;
    clock.advance(LEASE + Duration::from_secs(1));

    let s = open(&path, &clock).await;
    let lapsed = Some(lapse_error("crashed"));
    let one = claim(&s, "next").await;
    assert_eq!(
        (
            ids(&one),
            one.lease.suspect,
            one.lease.retries,
            one.lease.lapses
        ),
        (vec![e[0]], true, 1, 1)
    );
    assert_eq!(state(&s).await.error, lapsed, "the lapse says why");
    s.settle(&[Settlement::ack(&one.lease, e[0])])
        .await
        .unwrap();
    let st = state(&s).await;
    assert_eq!(
        (st.position, st.retries, &st.error),
        (e[0], 0, &None),
        "an ack inside the walk is progress: the count starts again"
    );

    // The walk goes on one event at a time; a failure with progress
    // starts the count at 1.
    let two = claim(&s, "next").await;
    assert_eq!((ids(&two), two.lease.suspect), (vec![e[1]], true));
    s.settle(&[Settlement::retry(
        &two.lease,
        Some(e[1]),
        Duration::ZERO,
        "boom",
    )])
    .await
    .unwrap();
    let st = state(&s).await;
    assert_eq!((st.position, st.retries), (e[1], 1));
    assert_eq!(st.error.as_deref(), Some("boom"));

    let three = claim(&s, "next").await;
    assert_eq!(
        (ids(&three), three.lease.retries, three.lease.lapses),
        (vec![e[2]], 1, 0)
    );
    s.settle(&[Settlement::ack(&three.lease, e[2])])
        .await
        .unwrap();
    assert_eq!(state(&s).await.error, None);

    // The ack that reaches the end of the lapsed batch ends the walk.
    let four = claim(&s, "next").await;
    assert_eq!((ids(&four), four.lease.suspect), (vec![e[3]], true));
    s.settle(&[Settlement::ack(&four.lease, e[3])])
        .await
        .unwrap();
    let st = state(&s).await;
    assert_eq!((st.position, st.retries, st.error), (e[3], 0, None));
    let more = work(&s, e[3], 3).await;
    let full = claim(&s, "next").await;
    assert_eq!(
        (ids(&full), full.lease.suspect, full.lease.lapses),
        (more, false, 0)
    );
}
