//! Promise 11 on SQLite: no single input stops delivery for others. Limits
//! are checked before anything is written; an event that cannot be read
//! back blocks only the queue it is in; extreme query bounds are answered.

use std::path::PathBuf;
use std::time::Duration;

use act::{
    Append, Claim, Correlation, Error, EventStore, ExpectedVersion, Message, Query, QueueFilter,
    QueueStore, Settlement, Subscription, Work,
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

fn claim() -> Claim {
    Claim {
        owner: "o".into(),
        queues: 10,
        events: 10,
        lease: Duration::from_secs(30),
        reactions: vec!["r".into()],
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

#[tokio::test]
async fn an_undecodable_stored_event_blocks_only_its_queue() {
    let (_d, path, s) = store().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.append(Append::new("a", ping())).await.unwrap()[0].id);
    }
    subscribe(&s).await;
    s.enqueue(&step(
        0,
        ids[3],
        &[
            ("bad", ids[0]),
            ("good", ids[1]),
            ("late", ids[2]),
            ("late", ids[3]),
        ],
    ))
    .await
    .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE events SET data = '{not json' WHERE id IN (?1, ?2)",
        [ids[0], ids[3]],
    )
    .unwrap();
    drop(conn);
    let got = s.claim(&claim()).await.unwrap();
    let leased: Vec<(&str, Vec<i64>)> = got
        .iter()
        .map(|b| {
            (
                b.lease.stream.as_str(),
                b.events.iter().map(|p| p.event.id).collect(),
            )
        })
        .collect();
    assert_eq!(
        leased,
        vec![("good", vec![ids[1]]), ("late", vec![ids[2]])],
        "a batch stops before an event it cannot read"
    );
    let bad = &s
        .queues(&QueueFilter {
            stream: Some("bad".into()),
            ..Default::default()
        })
        .await
        .unwrap()[0];
    assert!(bad.blocked);
    let error = bad.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("event {} `Ping`", ids[0])),
        "{error}"
    );
    // The rest of `late` blocks when it comes first.
    let late = got.iter().find(|b| b.lease.stream == "late").unwrap();
    s.settle(&[Settlement::ack(&late.lease, ids[2])])
        .await
        .unwrap();
    assert!(s.claim(&claim()).await.unwrap().is_empty());
    let blocked = s
        .queues(&QueueFilter {
            blocked: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        blocked
            .iter()
            .map(|q| q.stream.as_str())
            .collect::<Vec<_>>(),
        vec!["bad", "late"]
    );
}
