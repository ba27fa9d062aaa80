//! Promise 11 on SQLite: no single input stops delivery for others. Limits
//! are checked before anything is written; an event that cannot be read
//! back blocks only the queues it reaches; extreme query bounds are answered.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use act::{
    Act, Append, BrokerOptions, Correlation, Error, EventStore, ExpectedVersion, Message, Query,
    QueueFilter, QueueStore, Reaction, Store, Subscription, Work,
};
use act_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

async fn store() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("act.db");
    let options = SqliteOptions {
        watch_every: None,
        ..Default::default()
    };
    let s = SqliteStore::open_with(&path, options).await.unwrap();
    (dir, path, s)
}

fn invalid<T: std::fmt::Debug>(r: act::Result<T>, needle: &str) {
    match r {
        Err(Error::InvalidInput(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected InvalidInput ({needle}), got {other:?}"),
    }
}

fn ping() -> Vec<Message> {
    vec![Message::new("Ping", json!({}))]
}

async fn subscribe(s: &SqliteStore) {
    s.subscribe(&[Subscription {
        name: "r".into(),
        events: vec!["Ping".into()],
        target: None,
        start: 0,
    }])
    .await
    .unwrap();
}

fn step(from: i64, to: i64, work: &[(&str, i64)]) -> Correlation {
    Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from,
        to,
        work: work
            .iter()
            .map(|(q, e)| Work {
                stream: q.to_string(),
                event: *e,
                reaction: "r".into(),
                priority: 0,
            })
            .collect(),
    }
}

#[tokio::test]
async fn appends_are_checked_against_the_limits_first() {
    let (_d, _p, s) = store().await;
    invalid(s.append(Append::new("a\0b", ping())).await, "U+0000");
    invalid(s.append(Append::new("", ping())).await, "empty");
    invalid(
        s.append(Append::new("a", ping()).expect(ExpectedVersion::Exact(-1)))
            .await,
        "not a version",
    );
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    invalid(
        s.append(Append::new("a", vec![Message::new("Ping", deep)]))
            .await,
        "levels",
    );
    assert_eq!(s.head().await.unwrap(), 0, "nothing was appended");
}

#[tokio::test]
async fn enqueue_checks_queue_names_and_events() {
    let (_d, _p, s) = store().await;
    let e = s.append(Append::new("a", ping())).await.unwrap()[0].id;
    subscribe(&s).await;
    invalid(s.enqueue(&step(0, e, &[("q\0", e)])).await, "queue name");
    let long = "q".repeat(act::limits::MAX_NAME_BYTES + 1);
    invalid(s.enqueue(&step(0, e, &[(long.as_str(), e)])).await, "bytes");
    invalid(
        s.enqueue(&step(0, e, &[("q", e + 1)])).await,
        "not in the log",
    );
    invalid(s.enqueue(&step(0, e, &[("q", 0)])).await, "not in the log");
    invalid(
        s.subscribe(&[Subscription {
            name: String::new(),
            events: vec![],
            target: None,
            start: 0,
        }])
        .await,
        "reaction name",
    );
    assert!(s.queues(&QueueFilter::default()).await.unwrap().is_empty());
    assert_eq!(
        s.subscriptions().await.unwrap()[0].checkpoint,
        0,
        "nothing moved"
    );
}

#[tokio::test]
async fn extreme_query_bounds_are_answered() {
    let (_d, _p, s) = store().await;
    s.append(Append::new("a", ping())).await.unwrap();
    for q in [
        Query::new().after(i64::MAX),
        Query::new().before(i64::MIN),
        Query::new().after(i64::MIN).before(i64::MIN),
        Query::new().stream("a").after(i64::MAX).backward(),
    ] {
        assert!(s.query(&q).await.unwrap().is_empty(), "{q:?}");
    }
    assert_eq!(
        s.query(&Query::new().after(i64::MIN).limit(usize::MAX))
            .await
            .unwrap()
            .len(),
        1
    );
    let listed = s
        .queues(&QueueFilter {
            limit: Some(usize::MAX),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_stored_event_blocks_only_the_queue_it_reaches() {
    let (_d, path, s) = store().await;
    let s: Arc<dyn Store> = Arc::new(s);
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let seen = delivered.clone();
    let app = Act::builder(s.clone())
        .reaction(
            Reaction::on("Ping")
                .to(|e| Some(format!("q-{}", e.stream)))
                .handle(move |e, ctx| {
                    let seen = seen.clone();
                    async move {
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((ctx.stream().to_string(), e.id));
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for stream in ["a", "b", "a", "b"] {
        ids.push(s.append(Append::new(stream, ping())).await.unwrap()[0].id);
    }
    // Deeper than serde_json reads back (as if written before the limits).
    let mut deep = String::from("1");
    for _ in 0..200 {
        deep = format!("[{deep}]");
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE events SET data = ?2 WHERE id = ?1",
        rusqlite::params![ids[2], deep],
    )
    .unwrap();
    drop(conn);
    app.broker(BrokerOptions::default().poll(Duration::from_millis(50)))
        .run_once()
        .await
        .unwrap();
    // Order across queues is not promised: compare per queue.
    let mut got = delivered.lock().unwrap_or_else(|e| e.into_inner()).clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("q-a".to_string(), ids[0]),
            ("q-b".to_string(), ids[1]),
            ("q-b".to_string(), ids[3])
        ]
    );
    let a = s
        .queues(&QueueFilter {
            stream: Some("q-a".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert!(
        a.blocked && a.next == Some(ids[2]) && a.position == ids[0],
        "{a:?}"
    );
    let error = a.error.unwrap_or_default();
    assert!(
        error.contains(&format!("event {} `Ping` cannot be decoded", ids[2]))
            && error.contains("recursion limit"),
        "{error}"
    );
}
