//! An event a store cannot decode blocks only the queues it reaches, with
//! the decode error; every other event and queue goes on. The durable
//! backends return such events from their own decoders (their tests write
//! bad rows by hand); here a wrapper over the memory store turns one event
//! into what a backend returns for it.

mod common;

use act::{
    Act, Append, BrokerOptions, EventStore, Message, Query, QueueFilter, QueueStore, Reaction,
    Store,
};
use common::Watched;
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_blocks_only_the_queues_it_reaches() {
    let store = Arc::new(Watched::default());
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = delivered.clone();
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Ping")
                .to(|e| Some(format!("q-{}", e.stream)))
                .handle(move |e, ctx| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push((ctx.stream().to_string(), e.id));
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for s in ["a", "b", "a", "b"] {
        ids.push(
            store
                .append(Append::new(s, vec![Message::new("Ping", json!({}))]))
                .await
                .unwrap()[0]
                .id,
        );
    }
    store.bad.store(ids[2], std::sync::atomic::Ordering::SeqCst);
    app.broker(BrokerOptions::default())
        .run_once()
        .await
        .unwrap();
    let mut got = delivered.lock().unwrap().clone();
    // Queues run concurrently: no order between them is promised, only
    // within each (a stable sort by queue keeps it).
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("q-a".to_string(), ids[0]),
            ("q-b".to_string(), ids[1]),
            ("q-b".to_string(), ids[3])
        ]
    );
    let a = store
        .queues(&QueueFilter {
            stream: Some("q-a".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert!(a.blocked && a.next == Some(ids[2]), "{a:?}");
    let error = a.error.unwrap_or_default();
    assert!(
        error.contains("cannot be decoded") && error.contains("recursion limit"),
        "{error}"
    );
    let shown = store
        .query(&Query::new().after(ids[1]).limit(1))
        .await
        .unwrap();
    assert_eq!(
        shown[0].undecodable_error(),
        Some("recursion limit exceeded at line 1 column 129")
    );
}
