//! What the wake-up signal says, and what a broker does with it: only new
//! events send it back to the log; a settle, a release or an enqueue wakes
//! it to claim.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use act::{
    Act, Append, BrokerOptions, Claim, Correlation, EventStore, MemoryStore, Message, QueueStore,
    Reaction, Settlement, Store, Work,
};
use common::Watched;
use serde_json::json;

#[tokio::test]
async fn an_append_says_new_events_and_queue_changes_say_work_only() {
    let store = MemoryStore::new();
    let wake = store.wake();
    let before = *wake.borrow();
    let e = store
        .append(Append::new("s", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap();
    let appended = *wake.borrow();
    assert!(
        appended.has_events_since(&before),
        "an append is new events"
    );
    assert_ne!(appended.work, before.work, "an append may make work too");

    store
        .subscribe(&[act::Subscription {
            name: "r".into(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        }])
        .await
        .unwrap();
    let subscribed = *wake.borrow();
    store
        .enqueue(&Correlation {
            reactions: vec!["r".into()],
            replay: None,
            from: 0,
            to: e[0].id,
            work: vec![Work {
                stream: "q".into(),
                event: e[0].id,
                reaction: "r".into(),
                priority: 0,
            }],
        })
        .await
        .unwrap();
    let enqueued = *wake.borrow();
    assert!(
        !enqueued.has_events_since(&subscribed),
        "an enqueue is work only"
    );
    assert_ne!(enqueued.work, subscribed.work, "an enqueue wakes claims");

    let batch = store
        .claim(&Claim {
            owner: "b".into(),
            queues: 1,
            events: 10,
            lease: std::time::Duration::from_secs(30),
            reactions: vec!["r".into()],
        })
        .await
        .unwrap()
        .remove(0);
    let claimed = *wake.borrow();
    store
        .settle(&[Settlement::ack(&batch.lease, e[0].id)])
        .await
        .unwrap();
    let settled = *wake.borrow();
    assert!(!settled.has_events_since(&claimed), "a settle is work only");
    assert_ne!(settled.work, claimed.work, "a settle wakes claims");
}

/// Draining a backlog in one-event batches settles once per event; each
/// settle wakes the broker, which claims again but does not read the log
/// again (it used to: one empty read per settle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_reads_the_log_for_new_events_not_after_each_settle() {
    let store = Arc::new(Watched::default());
    for s in 0..20 {
        let messages = (0..10).map(|_| Message::new("Ping", json!({}))).collect();
        store
            .append(Append::new(format!("s{s}"), messages))
            .await
            .unwrap();
    }
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Ping")
                .to(|e| Some(format!("q-{}", e.stream)))
                .handle(|_e, _ctx| async { Ok(()) }),
        )
        .build()
        .unwrap();
    let stats = app
        .broker(BrokerOptions::default().batch(1).concurrency(4))
        .settle()
        .await
        .unwrap();
    assert_eq!(stats.events, 200, "every event delivered");
    let queries = store.queries.load(Ordering::SeqCst);
    // One page of 200 events, one read that finds the log caught up, and a
    // few more for wake-ups that raced the correlation: far fewer than the
    // 200 settles.
    assert!(
        queries <= 10,
        "the broker read the log {queries} times for 200 settles of one page"
    );
}
