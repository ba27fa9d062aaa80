//! Schema version 1 to 2: a file laid out by the released V1 SQL alone,
//! with v1 work inserted by hand, carried forward without losing anything.

use std::path::Path;
use std::time::Duration;

use act::{Claim, Correlation, Error, OpenMode, QueueFilter, QueueStore, Settlement, Work};
use rusqlite::params;

use crate::schema::{APPLICATION_ID, SCHEMA_VERSION, V1_SQL};
use crate::{SqliteOptions, SqliteStore};

/// A v1 store: 6 events; queue `busy` acked up to 2 of its work 1..=4
/// (priority 3), queue `done` acked all of its work 5, queue `held` leased
/// (the lease long expired) with its work 6 pending; the one correlation
/// checkpoint at 6.
fn v1_file(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE act_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL,
            applied_at TEXT    NOT NULL
        );",
    )
    .unwrap();
    conn.execute_batch(V1_SQL).unwrap();
    conn.execute(
        "INSERT INTO act_migrations VALUES (1, 'events, queues, work index', '2024-01-01T00:00:00Z')",
        [],
    )
    .unwrap();
    for v in 0..6i64 {
        conn.execute(
            "INSERT INTO events (stream, version, name, data, created, correlation)
             VALUES ('a', ?1, 'Ping', ?2, 1700000000000000, 'c')",
            params![v, format!("{{\"n\":{v}}}")],
        )
        .unwrap();
    }
    conn.execute_batch(
        "INSERT INTO queues (stream, position, head, next, priority, retries, error)
             VALUES ('busy', 2, 4, 3, 3, 1, 'boom');
         INSERT INTO queues (stream, position, head, next) VALUES ('done', 5, 5, NULL);
         INSERT INTO queues (stream, position, head, next, token, lease_owner, lease_expires)
             VALUES ('held', 0, 6, 6, 4, 'old', 1);
         INSERT INTO work (stream, event) VALUES ('busy', 1), ('busy', 2), ('busy', 3), ('busy', 4), ('done', 5),
             ('held', 6);
         UPDATE checkpoint SET position = 6 WHERE id = 1;",
    )
    .unwrap();
}

fn options() -> SqliteOptions {
    SqliteOptions {
        watch_every: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_v1_store_is_carried_forward_to_v2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    v1_file(&path);

    // Reading only cannot upgrade: it says how to, and leaves the file as it is.
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open_with_mode(&path, options(), OpenMode::ReadOnly)
        .await
        .unwrap_err();
    match &err {
        Error::Schema { message, .. } => assert!(
            message.contains("older") && message.contains("act worker"),
            "{message}"
        ),
        other => panic!("expected a schema error, got {other:?}"),
    }
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file was modified"
    );

    let s = SqliteStore::open_with_mode(&path, options(), OpenMode::Existing)
        .await
        .unwrap();
    assert_eq!(s.legacy_checkpoint().await.unwrap(), 6);
    assert!(s.subscriptions().await.unwrap().is_empty());
    let qs = s.queues(&QueueFilter::default()).await.unwrap();
    let summary: Vec<_> = qs
        .iter()
        .map(|q| {
            (
                q.stream.as_str(),
                q.position,
                q.head,
                q.next,
                q.lag,
                q.priority,
                q.retries,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("busy", 2, 4, Some(3), 2, 3, 1),
            ("done", 5, 5, None, 0, 0, 0),
            ("held", 0, 6, Some(6), 1, 0, 0)
        ]
    );
    assert_eq!((qs[0].waiting.as_deref(), qs[0].replay), (None, None));

    // The pending legacy items are claimable, with no reaction named; the
    // acknowledged v1 rows are gone.
    let got = s
        .claim(&Claim {
            owner: "b".into(),
            queues: 10,
            events: 10,
            lease: Duration::from_secs(30),
            reactions: vec!["some-reaction".into()],
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let batch = &got[0];
    assert_eq!(batch.lease.stream, "busy");
    let events: Vec<(i64, usize)> = batch
        .events
        .iter()
        .map(|p| (p.event.id, p.reactions.len()))
        .collect();
    assert_eq!(events, vec![(3, 0), (4, 0)]);
    assert_eq!(batch.events[0].event.data["n"], 2);
    assert_eq!(
        (
            batch.lease.position,
            batch.lease.retries,
            batch.lease.mark,
            batch.lease.suspect
        ),
        (2, 1, 4, false),
        "the enqueue mark counts every v1 row the queue had"
    );
    // The v1 lease lapses like any other; its batch is unknown, so the
    // queue is not walked one event at a time.
    let held = &got[1];
    let held_events: Vec<i64> = held.events.iter().map(|p| p.event.id).collect();
    assert_eq!(
        (
            held.lease.stream.as_str(),
            held_events,
            held.lease.retries,
            held.lease.lapses,
            held.lease.suspect
        ),
        ("held", vec![6], 1, 1, false)
    );
    assert!(held.lease.token > 4, "{:?}", held.lease);
    assert_eq!(
        s.settle(&[Settlement::ack(&held.lease, 6)]).await.unwrap(),
        vec![Ok(())]
    );
    assert_eq!(
        s.settle(&[Settlement::ack(&batch.lease, 4)]).await.unwrap(),
        vec![Ok(())]
    );
    let busy = &s.queues(&QueueFilter::default()).await.unwrap()[0];
    assert_eq!((busy.position, busy.lag, busy.next), (4, 0, None));

    // v2 work goes on from there; the queue keeps its v1 priority.
    s.subscribe(&[act::Subscription {
        name: "r".into(),
        events: vec!["Ping".into()],
        target: None,
        start: 6,
    }])
    .await
    .unwrap();
    let appended = act::EventStore::append(
        &s,
        act::Append::new("a", vec![act::Message::new("Ping", serde_json::json!({}))]),
    )
    .await
    .unwrap();
    s.enqueue(&Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from: 6,
        to: appended[0].id,
        work: vec![Work {
            stream: "busy".into(),
            event: appended[0].id,
            reaction: "r".into(),
            priority: 0,
        }],
    })
    .await
    .unwrap();
    let busy = &s.queues(&QueueFilter::default()).await.unwrap()[0];
    assert_eq!((busy.lag, busy.priority, busy.head), (1, 3, 7));
    s.close().await;

    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM act_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    assert_eq!(SCHEMA_VERSION, 2);
    let items: Vec<(String, i64, String, i64)> = conn
        .prepare("SELECT stream, event, reaction, seq FROM items ORDER BY stream, event")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items, vec![("busy".to_string(), 7, "r".to_string(), 5)]);
    drop(conn);

    // Upgraded: a read-only open now works.
    let ro = SqliteStore::open_with_mode(&path, options(), OpenMode::ReadOnly)
        .await
        .unwrap();
    assert_eq!(ro.legacy_checkpoint().await.unwrap(), 6);
}

#[tokio::test]
async fn a_v1_store_is_upgraded_once_by_racing_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    v1_file(&path);
    let mut opens = Vec::new();
    for _ in 0..4 {
        let p = path.clone();
        opens.push(tokio::spawn(async move {
            SqliteStore::open_with(&p, options()).await.map(|_| ())
        }));
    }
    for o in opens {
        o.await.unwrap().unwrap();
    }
    let s = SqliteStore::open_with(&path, options()).await.unwrap();
    let busy = &s.queues(&QueueFilter::default()).await.unwrap()[0];
    assert_eq!((busy.lag, busy.next), (2, Some(3)));
}
