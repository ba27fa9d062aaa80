//! The schema marker and open modes on the shared server (each test under
//! its own prefix): a prefix of schema 1, written here by hand exactly as
//! act-rs 0.1 left it, is upgraded in one script (pending work becomes
//! items with no reaction, acknowledged work is dropped, the correlation
//! checkpoint stays readable); `Existing` never creates a store and
//! `ReadOnly` never writes.

mod support;

use std::time::Duration;

use act::{
    Append, Claim, Error, EventStore, Message, OpenMode, Query, QueueFilter, QueueState,
    QueueStore, Settlement,
};
use act_redis::RedisStore;
use serde_json::json;

use support::{options, raw, Cleanup};

/// Every key under the prefix, sorted.
fn keys(prefix: &str) -> Vec<String> {
    let mut c = raw();
    let mut out: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .unwrap();
        out.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out
}

fn hset(key: &str, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (f, v) in fields {
        cmd.arg(*f).arg(*v);
    }
    let _: () = cmd.query(&mut raw()).unwrap();
}

fn zadd(key: &str, members: &[(i64, &str)]) {
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(key);
    for (score, m) in members {
        cmd.arg(*score).arg(*m);
    }
    let _: () = cmd.query(&mut raw()).unwrap();
}

/// The layout act-rs 0.1 (schema 1) wrote: four events of stream `a`, one
/// correlation checkpoint at 4, and three queues:
/// - `q1` at position 1 with work 1, 2, 3 (2 and 3 pending), two failed
///   attempts, claimable (in `due`);
/// - `q2` blocked at position 0 with work 4;
/// - `done` at position 2 with work 2 (nothing pending).
fn write_v1(prefix: &str) {
    let p = format!("{{{prefix}}}:");
    hset(
        &format!("{p}meta"),
        &[("schema", "1"), ("created", "1700000000000000")],
    );
    let _: () = redis::cmd("SET")
        .arg(format!("{p}seq"))
        .arg(4)
        .query(&mut raw())
        .unwrap();
    for id in 1..=4i64 {
        let record = format!(
            r#"{{"stream":"a","version":{},"name":"Ping","created":1700000000000000,"correlation":"c{id}","causation":{{}},"actor":{{"id":"t","name":"test"}},"data":{{"i":{id}}}}}"#,
            id - 1
        );
        hset(&format!("{p}events"), &[(&id.to_string(), &record)]);
        zadd(&format!("{p}s:a"), &[(id, &id.to_string())]);
    }
    let _: () = redis::cmd("SET")
        .arg(format!("{p}checkpoint"))
        .arg(4)
        .query(&mut raw())
        .unwrap();
    zadd(&format!("{p}queues"), &[(0, "q1"), (0, "q2"), (0, "done")]);
    let due_q1 = format!("{:08x}{:016x}q1", 2147483647u32, 2);
    hset(
        &format!("{p}q:q1"),
        &[
            ("position", "1"),
            ("head", "3"),
            ("priority", "0"),
            ("retries", "2"),
            ("blocked", "0"),
            ("token", "5"),
            ("error", "boom"),
            ("dk", &due_q1),
        ],
    );
    zadd(&format!("{p}w:q1"), &[(1, "1"), (2, "2"), (3, "3")]);
    zadd(&format!("{p}due"), &[(0, &due_q1)]);
    hset(
        &format!("{p}q:q2"),
        &[
            ("position", "0"),
            ("head", "4"),
            ("priority", "3"),
            ("retries", "1"),
            ("blocked", "1"),
            ("token", "1"),
            ("error", "poison"),
        ],
    );
    zadd(&format!("{p}w:q2"), &[(4, "4")]);
    zadd(&format!("{p}blocked"), &[(0, "q2")]);
    hset(
        &format!("{p}q:done"),
        &[
            ("position", "2"),
            ("head", "2"),
            ("priority", "0"),
            ("retries", "0"),
            ("blocked", "0"),
            ("token", "3"),
        ],
    );
    zadd(&format!("{p}w:done"), &[(2, "2")]);
}

fn marker(prefix: &str) -> Option<i64> {
    redis::cmd("HGET")
        .arg(format!("{{{prefix}}}:meta"))
        .arg("schema")
        .query(&mut raw())
        .unwrap()
}

async fn open_in(prefix: &str, mode: OpenMode) -> act::Result<RedisStore> {
    RedisStore::open_with_mode(support::URL, options(prefix), mode).await
}

async fn state(s: &RedisStore, stream: &str) -> QueueState {
    s.queues(&QueueFilter {
        stream: Some(stream.into()),
        ..Default::default()
    })
    .await
    .unwrap()
    .remove(0)
}

fn claim(reactions: &[&str]) -> Claim {
    Claim {
        owner: "o".into(),
        queues: 10,
        events: 10,
        lease: Duration::from_secs(30),
        reactions: reactions.iter().map(|r| r.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_schema_1_prefix_is_upgraded_keeping_pending_work_and_the_checkpoint() {
    let prefix = support::fresh_prefix("v1");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    write_v1(&prefix);
    let s = open_in(&prefix, OpenMode::Create).await.unwrap();
    assert_eq!(marker(&prefix), Some(act_redis::SCHEMA_VERSION));
    assert_eq!(s.legacy_checkpoint().await.unwrap(), 4);
    assert!(s.subscriptions().await.unwrap().is_empty());
    assert!(
        keys(&prefix).iter().all(|k| !k.contains("}:w:")),
        "schema-1 work sets are gone: {:?}",
        keys(&prefix)
    );
    let q1 = state(&s, "q1").await;
    assert_eq!(
        (q1.position, q1.head, q1.next, q1.lag, q1.retries, q1.token),
        (1, 3, Some(2), 2, 2, 5)
    );
    assert_eq!(
        (q1.error.as_deref(), q1.waiting, q1.replay),
        (Some("boom"), None, None)
    );
    let q2 = state(&s, "q2").await;
    assert_eq!(
        (q2.blocked, q2.next, q2.lag, q2.priority),
        (true, Some(4), 1, 3)
    );
    let done = state(&s, "done").await;
    assert_eq!((done.position, done.next, done.lag), (2, None, 0));
    // The pending items (q1's two, q2's one) count under no reaction.
    assert_eq!(
        s.pending_by_reaction().await.unwrap(),
        vec![(String::new(), 3)]
    );
    // Legacy items name no reaction: any broker may take them, and the
    // broker runs every reaction to the event, as schema 1 did.
    let got = s.claim(&claim(&["whatever"])).await.unwrap();
    assert_eq!(got.len(), 1);
    let b = &got[0];
    assert_eq!(b.lease.stream, "q1");
    assert_eq!(
        (
            b.lease.position,
            b.lease.retries,
            b.lease.token,
            b.lease.mark
        ),
        (1, 2, 6, 2)
    );
    let ids: Vec<i64> = b.events.iter().map(|p| p.event.id).collect();
    assert_eq!(ids, vec![2, 3]);
    assert!(b.events.iter().all(|p| p.reactions.is_empty()));
    assert_eq!(b.events[0].event.data, json!({"i": 2}));
    let r = s.settle(&[Settlement::ack(&b.lease, 3)]).await.unwrap();
    assert_eq!(r, vec![Ok(())]);
    let q1 = state(&s, "q1").await;
    assert_eq!((q1.position, q1.next, q1.lag, q1.retries), (3, None, 0, 0));
    assert_eq!(
        s.pending_by_reaction().await.unwrap(),
        vec![(String::new(), 1)]
    );
    // The blocked queue resumes at its pending event when unblocked.
    assert_eq!(
        s.unblock(&["q2".into()]).await.unwrap(),
        vec!["q2".to_string()]
    );
    let got = s.claim(&claim(&[])).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].lease.stream.as_str(), got[0].events[0].event.id),
        ("q2", 4)
    );
    // The log reads as before.
    assert_eq!(s.query(&Query::new().stream("a")).await.unwrap().len(), 4);
    // Opening again changes nothing.
    drop(s);
    let s = open_in(&prefix, OpenMode::Existing).await.unwrap();
    assert_eq!(state(&s, "q1").await.position, 3);
    assert_eq!(s.legacy_checkpoint().await.unwrap(), 4);
}

/// Schema 3 only adds the `pending` hash: a schema-2 prefix is this
/// build's layout without it. Opening one counts every queue's pending
/// items per reaction; a read-only open refuses it until then.
#[tokio::test]
async fn a_schema_2_prefix_is_upgraded_by_counting_its_pending_items() {
    let prefix = support::fresh_prefix("v2");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open_in(&prefix, OpenMode::Create).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = s
            .append(act::Append::new(
                "a",
                vec![act::Message::new("Ping", json!({ "i": i }))],
            ))
            .await
            .unwrap();
        ids.push(e[0].id);
    }
    let subs: Vec<act::subscription::Subscription> = ["x", "y"]
        .iter()
        .map(|n| act::subscription::Subscription {
            name: n.to_string(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        })
        .collect();
    s.subscribe(&subs).await.unwrap();
    let work = |q: &str, e: i64, r: &str| act::queue::Work {
        stream: q.into(),
        event: e,
        reaction: r.into(),
        priority: 0,
    };
    s.enqueue(&act::subscription::Correlation {
        reactions: vec!["x".into(), "y".into()],
        replay: None,
        from: 0,
        to: ids[2],
        work: vec![
            work("q1", ids[0], "x"),
            work("q1", ids[0], "y"),
            work("q2", ids[1], "x"),
            work("q2", ids[2], "x"),
        ],
    })
    .await
    .unwrap();
    drop(s);
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{prefix}}}:pending"))
        .query(&mut raw())
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:meta"))
        .arg("schema")
        .arg(2)
        .query(&mut raw())
        .unwrap();
    match open_in(&prefix, OpenMode::ReadOnly).await {
        Err(act::Error::Schema { message, .. }) => {
            assert!(message.contains("schema version 2"), "{message}")
        }
        other => panic!("a read-only open of schema 2 must ask for an upgrade: {other:?}"),
    }
    let s = open_in(&prefix, OpenMode::Existing).await.unwrap();
    assert_eq!(marker(&prefix), Some(act_redis::SCHEMA_VERSION));
    assert_eq!(
        s.pending_by_reaction().await.unwrap(),
        vec![("x".to_string(), 3), ("y".to_string(), 1)]
    );
    assert_eq!(state(&s, "q2").await.lag, 2);
}

#[tokio::test]
async fn processes_opening_a_schema_1_prefix_together_upgrade_it_once() {
    let prefix = support::fresh_prefix("v1race");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    write_v1(&prefix);
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let prefix = prefix.clone();
            tokio::spawn(async move { open_in(&prefix, OpenMode::Existing).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    let q1 = state(&stores[0], "q1").await;
    assert_eq!((q1.lag, q1.next), (2, Some(2)), "{q1:?}");
    let got = stores[1].claim(&claim(&[])).await.unwrap();
    assert_eq!(got[0].events.len(), 2, "the items were not doubled");
}

#[tokio::test]
async fn read_only_never_upgrades_and_asks_for_it() {
    let prefix = support::fresh_prefix("v1ro");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    write_v1(&prefix);
    let before = keys(&prefix);
    match open_in(&prefix, OpenMode::ReadOnly).await {
        Err(Error::Schema { message, .. }) => {
            assert!(
                message.contains("version 1") && message.contains("upgrade"),
                "{message}"
            )
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    assert_eq!(marker(&prefix), Some(1));
    assert_eq!(keys(&prefix), before, "a read-only open wrote something");
    // A writer upgrades it; then read-only opens work.
    drop(open_in(&prefix, OpenMode::Existing).await.unwrap());
    let ro = open_in(&prefix, OpenMode::ReadOnly).await.unwrap();
    assert_eq!(state(&ro, "q1").await.lag, 2);
}

#[tokio::test]
async fn existing_and_read_only_never_create_a_store() {
    let prefix = support::fresh_prefix("missing");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    for mode in [OpenMode::Existing, OpenMode::ReadOnly] {
        match open_in(&prefix, mode).await {
            Err(Error::Missing { store }) => assert!(store.contains("127.0.0.1"), "{store}"),
            other => panic!("{mode:?}: expected Missing, got {other:?}"),
        }
        assert!(
            keys(&prefix).is_empty(),
            "{mode:?} wrote {:?}",
            keys(&prefix)
        );
    }
    // Act keys without a marker are refused in every mode, not created over.
    let _: () = redis::cmd("SET")
        .arg(format!("{{{prefix}}}:seq"))
        .arg(3)
        .query(&mut raw())
        .unwrap();
    for mode in [OpenMode::Create, OpenMode::Existing, OpenMode::ReadOnly] {
        assert!(
            matches!(open_in(&prefix, mode).await, Err(Error::Schema { .. })),
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn a_read_only_store_reads_and_refuses_every_write() {
    let prefix = support::fresh_prefix("ro");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let w = open_in(&prefix, OpenMode::Create).await.unwrap();
    w.append(Append::new("a", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap();
    let before = keys(&prefix);
    let ro = open_in(&prefix, OpenMode::ReadOnly).await.unwrap();
    assert_eq!(ro.mode(), OpenMode::ReadOnly);
    assert_eq!(ro.head().await.unwrap(), 1);
    assert_eq!(ro.query(&Query::new()).await.unwrap().len(), 1);
    assert!(ro.queues(&QueueFilter::default()).await.unwrap().is_empty());
    assert!(ro.subscriptions().await.unwrap().is_empty());
    assert!(ro.replays().await.unwrap().is_empty());
    assert_eq!(ro.next_due(&[]).await.unwrap(), None);
    let refused = |r: act::Result<()>| match r {
        Err(Error::InvalidInput(m)) => assert!(m.contains("read-only"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    };
    refused(
        ro.append(Append::new("a", vec![Message::new("Ping", json!({}))]))
            .await
            .map(|_| ()),
    );
    refused(ro.claim(&claim(&["r"])).await.map(|_| ()));
    refused(ro.unblock(&["q".into()]).await.map(|_| ()));
    refused(ro.reset("q", 0).await.map(|_| ()));
    refused(ro.retire(&["r".into()]).await.map(|_| ()));
    refused(ro.subscribe(&[]).await.map(|_| ()));
    assert_eq!(keys(&prefix), before, "a read-only store wrote something");
}
