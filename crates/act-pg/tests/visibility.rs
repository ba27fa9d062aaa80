//! Promise 4 on PostgreSQL, proven with concurrent writers whose commits land
//! out of id order, and with its negative control: the same scenarios with
//! the mechanism switched off (`naive_ids`: ids from a sequence, readers
//! without the visibility bound) must lose events — otherwise these tests
//! would prove nothing.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::tck::Probe;
use act::{Act, Append, BrokerOptions, Message, Query, Reaction, Store};
use common::{fresh_schema, open, options, DropSchema};
use serde_json::json;

async fn store(naive: bool, delay_ms: i32) -> (Arc<dyn Store>, DropSchema) {
    let schema = fresh_schema("vis");
    let offset = Arc::new(AtomicI64::new(0));
    let mut o = options(&schema, &offset);
    o.naive_ids = naive;
    o.commit_delay_ms = delay_ms;
    o.pool_size = 12;
    (Arc::new(open(o).await), DropSchema { schema, offset })
}

fn app(store: &Arc<dyn Store>, probe: &Probe) -> Act {
    Act::builder(store.clone())
        .reaction(probe.reaction(Reaction::on("Ping").to_stream("all")))
        .build()
        .unwrap()
}

async fn raw_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&common::server(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Appends one Ping inside an explicit transaction that stays open.
async fn begin_append(client: &tokio_postgres::Client, schema: &str, naive: bool) -> i64 {
    client.batch_execute("BEGIN").await.unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT id FROM {schema}.act_append('slow', NULL, ARRAY['Ping'], ARRAY['{{}}'::jsonb], 'c', NULL, NULL, NULL, 0, $1, 0)"
            ),
            &[&naive],
        )
        .await
        .unwrap();
    row.get(0)
}

/// A commits after B although A took its id first; a broker correlates in
/// between. Returns (ids delivered, ids committed).
async fn late_commit(naive: bool) -> (Vec<i64>, Vec<i64>) {
    let (store, guard) = store(naive, 0).await;
    let probe = Probe::new();
    let broker = app(&store, &probe).broker(BrokerOptions::default().owner("b"));
    let a_client = raw_client().await;
    let a = begin_append(&a_client, &guard.schema, naive).await;
    let b = store
        .append(Append::new("fast", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap()[0]
        .id;
    assert!(a < b, "A took its id first ({a} < {b})");
    broker.run_once().await.unwrap();
    a_client.batch_execute("COMMIT").await.unwrap();
    broker.run_once().await.unwrap();
    (probe.delivered("all"), vec![a, b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_after_a_higher_id_is_still_delivered_in_id_order() {
    let (delivered, committed) = late_commit(false).await;
    assert_eq!(delivered, committed, "every event once, in id order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_naive_ids_skip_the_late_commit() {
    let (delivered, committed) = late_commit(true).await;
    assert_eq!(
        delivered,
        vec![committed[1]],
        "without the mechanism the late commit is skipped"
    );
}

/// Eight writers append with random delays before commit and roll some
/// transactions back, while a broker delivers. Returns (delivered, committed).
async fn stress(naive: bool) -> (Vec<i64>, Vec<i64>) {
    let (store, guard) = store(naive, 4).await;
    let probe = Probe::new();
    let app = app(&store, &probe);
    let handle = app
        .broker(
            BrokerOptions::default()
                .owner("b")
                .poll(Duration::from_millis(20)),
        )
        .start();
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        let schema = guard.schema.clone();
        writers.push(tokio::spawn(async move {
            let raw = raw_client().await;
            let mut rng = fastrand::Rng::with_seed(w);
            for n in 0..60 {
                if rng.u8(..10) == 0 {
                    // A transaction that appends and rolls back: its event
                    // must never be delivered.
                    begin_append(&raw, &schema, naive).await;
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..3))).await;
                    raw.batch_execute("ROLLBACK").await.unwrap();
                } else {
                    store
                        .append(Append::new(
                            format!("w{w}"),
                            vec![Message::new("Ping", json!({ "n": n }))],
                        ))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // Stop the broker (it releases its leases), then deliver what is left.
    handle.shutdown().await.unwrap();
    app.broker(BrokerOptions::default().owner("final"))
        .settle()
        .await
        .unwrap();
    let mut committed: Vec<i64> = Vec::new();
    for w in 0..8 {
        let events = store
            .query(&Query::new().stream(format!("w{w}")))
            .await
            .unwrap();
        committed.extend(events.iter().map(|e| e.id));
    }
    committed.sort_unstable();
    (probe.delivered("all"), committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_delays_and_rollbacks_lose_nothing() {
    let (delivered, committed) = stress(false).await;
    assert!(
        committed.len() > 300,
        "most appends committed: {}",
        committed.len()
    );
    let seen: BTreeSet<i64> = delivered.iter().copied().collect();
    let missing: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|id| !seen.contains(id))
        .collect();
    let wanted: BTreeSet<i64> = committed.iter().copied().collect();
    let extra: Vec<i64> = delivered
        .iter()
        .copied()
        .filter(|id| !wanted.contains(id))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, never committed but delivered {extra:?}"
    );
    assert_eq!(
        delivered, committed,
        "every committed event delivered once, in id order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_naive_ids_lose_events_under_concurrent_writers() {
    let (delivered, committed) = stress(true).await;
    let seen: BTreeSet<i64> = delivered.iter().copied().collect();
    let missing: Vec<&i64> = committed.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        !missing.is_empty(),
        "the naive store lost nothing this time: the stress test would not detect a broken visibility scheme"
    );
}

/// The bound follows this schema's writers only: a long transaction that
/// writes elsewhere (another schema, like another app or test on the same
/// server) does not hide new events from readers here, while an append to
/// this schema that has not committed still bounds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_writers_of_this_schema_hold_readers_back() {
    let (store, guard) = store(false, 0).await;
    let elsewhere = fresh_schema("vis_other");
    let other = raw_client().await;
    other
        .batch_execute(&format!(
            "CREATE SCHEMA {elsewhere}; CREATE TABLE {elsewhere}.t (x int); BEGIN; INSERT INTO {elsewhere}.t VALUES (1)"
        ))
        .await
        .unwrap();
    let e = store
        .append(Append::new("a", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap()[0]
        .id;
    // The transaction elsewhere stays open for the rest of the test: a read
    // that waited for it would never return (the bound is only there to fail
    // instead of hanging; a loaded machine never takes that long).
    let got = tokio::time::timeout(Duration::from_secs(30), store.query(&Query::new().after(0)))
        .await
        .expect("the read waited for a transaction elsewhere")
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![e],
        "a write elsewhere hid an event here"
    );

    // An append to this schema that has not committed: events after it stay
    // hidden until it ends, then everything is read in id order.
    let holder = raw_client().await;
    let held = begin_append(&holder, &guard.schema, false).await;
    let later = store
        .append(Append::new("a", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap()[0]
        .id;
    let got = store.query(&Query::new().after(e)).await.unwrap();
    assert!(
        got.is_empty(),
        "an event past a running append of this schema was visible: {got:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let got = store.query(&Query::new().after(e)).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![held, later]
    );
    other
        .batch_execute(&format!("COMMIT; DROP SCHEMA {elsewhere} CASCADE"))
        .await
        .unwrap();
}
