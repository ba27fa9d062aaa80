//! Promise 11 for stored data: an event row this code cannot decode (a
//! payload nested past serde_json's recursion limit, written before the
//! limits existed; a damaged actor) is read back as an undecodable event
//! instead of failing the read, and blocks only the queues it reaches.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use act::{Act, Append, BrokerOptions, Message, Query, QueueFilter, Reaction, Store};
use common::{fresh_schema, open, options, raw, server, DropSchema};
use serde_json::json;

/// Appends one event by hand, past the store's checks, as an old writer or
/// a damaged row would have left it.
async fn append_by_hand(schema: &str, stream: &str, data: &str, actor: Option<&str>) -> i64 {
    let c = raw(&server()).await;
    c.query_one(
        &format!(
            "SELECT id FROM {schema}.act_append($1, NULL, ARRAY['Ping'], ARRAY[$2::text::jsonb], 'c', NULL, $3::text::jsonb, NULL, 0, false, 0)"
        ),
        &[&stream, &data, &actor],
    )
    .await
    .expect("an append by hand")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_is_read_back_and_blocks_only_the_queues_it_reaches() {
    let schema = fresh_schema("undec");
    let offset = Arc::new(AtomicI64::new(0));
    let mut o = options(&schema, &offset);
    o.listen = false;
    let store: Arc<dyn Store> = Arc::new(open(o).await);
    let _guard = DropSchema {
        schema: schema.clone(),
        offset,
    };
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let seen = delivered.clone();
    let app = Act::builder(store.clone())
        .reaction(
            Reaction::on("Ping")
                .to(|e| Some(format!("q-{}", e.stream)))
                .handle(move |e, ctx| {
                    let seen = seen.clone();
                    async move {
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((ctx.stream().to_string(), e.id));
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap();
    let ping = |s: &str| Append::new(s, vec![Message::new("Ping", json!({}))]);
    let first = store.append(ping("a")).await.unwrap()[0].id;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let bad = append_by_hand(&schema, "a", &deep, None).await;
    let odd = append_by_hand(&schema, "c", "{}", Some(r#"{"id": 7}"#)).await;
    let last = store.append(ping("b")).await.unwrap()[0].id;

    let all = store
        .query(&Query::new())
        .await
        .expect("a read past an undecodable row");
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![first, bad, odd, last]
    );
    let why = all[1]
        .undecodable_error()
        .expect("the deep payload is undecodable");
    assert!(
        why.contains("data") && why.contains("recursion limit"),
        "{why}"
    );
    assert_eq!(
        (all[1].stream.as_str(), all[1].version, all[1].name.as_str()),
        ("a", 1, "Ping")
    );
    assert!(all[1].data["act.undecodable"]["raw"]
        .as_str()
        .is_some_and(|r| r.starts_with("[[[[")));
    let why = all[2]
        .undecodable_error()
        .expect("the damaged actor is undecodable");
    assert!(why.contains("actor"), "{why}");
    assert!(all[3].undecodable_error().is_none());

    app.broker(BrokerOptions::default())
        .run_once()
        .await
        .unwrap();
    let mut got = delivered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Queues run concurrently: no order between them is promised, only
    // within each (a stable sort by queue keeps it).
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![("q-a".to_string(), first), ("q-b".to_string(), last)]
    );
    for (queue, at) in [("q-a", bad), ("q-c", odd)] {
        let q = store
            .queues(&QueueFilter {
                stream: Some(queue.into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .remove(0);
        assert!(q.blocked && q.next == Some(at), "{q:?}");
        assert!(
            q.error
                .as_deref()
                .is_some_and(|e| e.contains("cannot be decoded")),
            "{q:?}"
        );
    }
}
