//! Appends on PostgreSQL beyond the kit: appends that expect any version
//! never fail under contention, appends to one stream take turns without
//! holding back other streams, every append is checked against the input
//! limits, and queries survive extreme bounds.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::{Append, Error, EventStore, ExpectedVersion, Message, Query};
use act_pg::PgStore;
use common::{fresh_schema, open, options, raw, server, DropSchema};
use serde_json::json;

async fn store(tag: &str, pool: usize) -> (Arc<PgStore>, DropSchema) {
    let schema = fresh_schema(tag);
    let offset = Arc::new(AtomicI64::new(0));
    let mut o = options(&schema, &offset);
    o.pool_size = pool;
    o.listen = false;
    (Arc::new(open(o).await), DropSchema { schema, offset })
}

fn ping(n: usize) -> Vec<Message> {
    vec![Message::new("Ping", json!({ "n": n }))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_expecting_any_version_never_conflict_under_contention() {
    let (s, _guard) = store("any", 16).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for n in 0..10 {
                let e = s
                    .append(Append::new("hot", ping(t * 10 + n)))
                    .await
                    .unwrap_or_else(|e| panic!("an append with ExpectedVersion::Any failed: {e}"));
                versions.push(e[0].version);
            }
            versions
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (0..160).collect::<Vec<i64>>(),
        "every append got its own version"
    );
    let all = s.query(&Query::new().stream("hot")).await.unwrap();
    assert_eq!(all.len(), 160);
    assert!(
        all.windows(2)
            .all(|w| w[0].id < w[1].id && w[0].version + 1 == w[1].version),
        "ids follow versions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_expectation_that_loses_a_race_is_a_conflict_naming_the_winner() {
    let (s, _guard) = store("exact", 16).await;
    s.append(Append::new("x", ping(0))).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.append(Append::new("x", ping(t)).expect(ExpectedVersion::Exact(0)))
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(Error::Concurrency { actual, .. }) => assert_eq!(actual, act::ActualVersion::At(1)),
            Err(e) => panic!("a lost race must be a concurrency error, got {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one writer wins version 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_holding_one_stream_does_not_hold_back_another() {
    let (s, guard) = store("turns", 4).await;
    // A transaction that appended to `held` and has not committed.
    let holder = raw(&server()).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one(
            &format!(
                "SELECT id FROM {}.act_append('held', NULL, ARRAY['Ping'], ARRAY['{{}}'::jsonb], 'c', NULL, NULL, NULL, 0, false, 0)",
                guard.schema
            ),
            &[],
        )
        .await
        .unwrap();
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        s.append(Append::new("free", ping(1))),
    )
    .await;
    assert!(
        matches!(other, Ok(Ok(_))),
        "an append to another stream waited: {other:?}"
    );
    // The same stream waits for its turn, then appends after the holder.
    let waiting = {
        let s = s.clone();
        tokio::spawn(async move { s.append(Append::new("held", ping(2))).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "appends to one stream take turns");
    holder.batch_execute("COMMIT").await.unwrap();
    let e = waiting.await.unwrap().unwrap();
    assert_eq!(e[0].version, 1, "it appended after the holder's version 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_is_checked_against_the_limits_first() {
    let (s, _guard) = store("limits", 2).await;
    let deep = (0..100).fold(json!(1), |v, _| json!([v]));
    let refused = [
        Append::new("s", ping(0)).expect(ExpectedVersion::Exact(-1)),
        Append::new("s", vec![Message::new("Ping", json!({"a": "b\u{0}c"}))]),
        Append::new("s", vec![Message::new("Ping", deep)]),
        Append::new("s\u{0}", ping(0)),
        Append::new("", ping(0)),
        Append::new("x".repeat(act::limits::MAX_NAME_BYTES + 1), ping(0)),
    ];
    for a in refused {
        let what = format!("{:?}", a.stream);
        match s.append(a).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("append to {what} must be refused as invalid input, got {other:?}"),
        }
    }
    assert!(
        s.query(&Query::new()).await.unwrap().is_empty(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_survive_extreme_bounds() {
    let (s, _guard) = store("bounds", 2).await;
    let ids: Vec<i64> = s
        .append(Append::new("a", (0..3).flat_map(ping).collect()))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let n = |q: Query| {
        let s = s.clone();
        async move {
            s.query(&q)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(n(Query::new().after(i64::MAX)).await, Vec::<i64>::new());
    assert_eq!(n(Query::new().before(i64::MIN)).await, Vec::<i64>::new());
    assert_eq!(n(Query::new().after(i64::MIN)).await, ids);
    assert_eq!(n(Query::new().before(i64::MAX)).await, ids);
    assert_eq!(n(Query::new().limit(usize::MAX)).await, ids);
    assert_eq!(
        n(Query::new()
            .after(i64::MIN)
            .before(i64::MAX)
            .limit(usize::MAX)
            .backward())
        .await,
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        n(Query::new().stream("a").after(i64::MAX).limit(usize::MAX)).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        n(Query::new().stream_pattern("*").before(i64::MIN).backward()).await,
        Vec::<i64>::new()
    );
}
