//! Kit tests of the event store port: append, versions, idempotency, queries,
//! visibility and wake-up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::support::{ping, pings, visible};
use super::Backend;
use crate::error::{ActualVersion, Error};
use crate::event::{Actor, Append, Causation, EventRef, ExpectedVersion, Message};
use crate::query::Query;

fn msgs(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new("Ping", json!({ "i": i })))
        .collect()
}

/// Ids increase across streams; versions count from 0 within each stream.
pub async fn append_assigns_increasing_ids_and_consecutive_versions(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    assert_eq!(s.head().await.unwrap(), 0, "a new store is empty");
    let a = s.append(Append::new("a", msgs(3))).await.unwrap();
    let bb = s.append(Append::new("b", msgs(2))).await.unwrap();
    let a2 = s.append(Append::new("a", msgs(1))).await.unwrap();
    let ids: Vec<i64> = a.iter().chain(&bb).chain(&a2).map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert!(ids[0] >= 1);
    let versions = |v: &[Arc<crate::Event>]| v.iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(versions(&a), vec![0, 1, 2]);
    assert_eq!(versions(&bb), vec![0, 1]);
    assert_eq!(versions(&a2), vec![3]);
    assert_eq!(s.head().await.unwrap(), *ids.last().unwrap());
    visible(s, ids.len()).await;
    assert!(a
        .iter()
        .all(|e| e.meta.correlation == a[0].meta.correlation));
    assert_ne!(
        a[0].meta.correlation, bb[0].meta.correlation,
        "each append starts a correlation"
    );
    let all = s.query(&Query::new()).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
}

/// A wrong expected version appends nothing and names both versions.
pub async fn append_with_a_stale_version_is_a_conflict_naming_both_versions(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    s.append(Append::new("a", msgs(1)).expect(ExpectedVersion::NoStream))
        .await
        .unwrap();
    let err = s
        .append(Append::new("a", msgs(1)).expect(ExpectedVersion::NoStream))
        .await
        .unwrap_err();
    match &err {
        Error::Concurrency {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream, "a");
            assert_eq!(*expected, ExpectedVersion::NoStream);
            assert_eq!(*actual, ActualVersion::At(0));
        }
        other => panic!("expected a concurrency error, got {other:?}"),
    }
    let err = s
        .append(Append::new("a", msgs(1)).expect(ExpectedVersion::Exact(5)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected version 5, actual 0"),
        "message names both: {err}"
    );
    let err = s
        .append(Append::new("new", msgs(1)).expect(ExpectedVersion::Exact(0)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Concurrency {
                actual: ActualVersion::None,
                ..
            }
        ),
        "{err:?}"
    );
    visible(s, 1).await;
    assert_eq!(
        s.query(&Query::new()).await.unwrap().len(),
        1,
        "nothing appended"
    );
    s.append(Append::new("a", msgs(1)).expect(ExpectedVersion::Exact(0)))
        .await
        .unwrap();
}

/// All or nothing: a conflicting append of many events leaves no trace.
pub async fn a_conflicting_multi_event_append_appends_nothing(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    s.append(Append::new("a", msgs(2))).await.unwrap();
    let head = s.head().await.unwrap();
    assert!(s
        .append(Append::new("a", msgs(50)).expect(ExpectedVersion::Exact(0)))
        .await
        .is_err());
    assert_eq!(s.head().await.unwrap(), head);
    assert_eq!(s.query(&Query::new().stream("a")).await.unwrap().len(), 2);
    let ok = s
        .append(Append::new("a", msgs(50)).expect(ExpectedVersion::Exact(1)))
        .await
        .unwrap();
    assert_eq!(ok.len(), 50);
    assert_eq!(ok.last().unwrap().version, 51);
}

/// Writers racing on one stream with optimistic concurrency: versions stay
/// dense, every successful append is whole, nothing is lost or doubled.
pub async fn concurrent_writers_never_interleave_or_lose_versions(b: &impl Backend) {
    let f = b.open().await;
    let writers = 6;
    let appends_each = 15;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < appends_each {
                let last = s
                    .query(&Query::new().stream("hot").backward().limit(1))
                    .await
                    .unwrap();
                let expected = ExpectedVersion::after(last.first().map(|e| e.version));
                let m = vec![
                    Message::new("Ping", json!({"w": w, "n": done, "part": 0})),
                    Message::new("Ping", json!({"w": w, "n": done, "part": 1})),
                ];
                match s.append(Append::new("hot", m).expect(expected)).await {
                    Ok(_) => done += 1,
                    Err(Error::Concurrency { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = f.store.query(&Query::new().stream("hot")).await.unwrap();
    assert_eq!(all.len(), writers * appends_each * 2);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.version, i as i64, "versions are dense");
    }
    for pair in all.chunks(2) {
        assert_eq!(
            pair[0].data["w"], pair[1].data["w"],
            "an append's events stay together"
        );
        assert_eq!(pair[0].data["n"], pair[1].data["n"]);
        assert_eq!(
            (pair[0].data["part"].as_i64(), pair[1].data["part"].as_i64()),
            (Some(0), Some(1))
        );
    }
}

/// Effectively-once: the second append with a key returns the first result.
pub async fn a_used_idempotency_key_returns_the_first_result_and_appends_nothing(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let first = s
        .append(Append::new("a", msgs(2)).idempotent("reaction:7:a:0"))
        .await
        .unwrap();
    let head = s.head().await.unwrap();
    // Same key, a stale version and other messages: still the first result.
    let again = s
        .append(
            Append::new("a", msgs(3))
                .idempotent("reaction:7:a:0")
                .expect(ExpectedVersion::NoStream),
        )
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|e| e.id).collect::<Vec<_>>(),
        first.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(again[0].data, first[0].data);
    assert_eq!(s.head().await.unwrap(), head, "nothing appended");
    let other = s
        .append(Append::new("a", msgs(1)).idempotent("reaction:8:a:0"))
        .await
        .unwrap();
    assert_eq!(other[0].version, 2, "another key appends");
}

/// An empty append with a key is a lookup: it does not use the key.
pub async fn an_empty_append_looks_a_key_up_without_using_it(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let none = s
        .append(Append::new("a", vec![]).idempotent("k"))
        .await
        .unwrap();
    assert!(none.is_empty());
    let real = s
        .append(Append::new("a", msgs(1)).idempotent("k"))
        .await
        .unwrap();
    assert_eq!(real.len(), 1, "the key was still free");
    let found = s
        .append(Append::new("a", vec![]).idempotent("k"))
        .await
        .unwrap();
    assert_eq!(found[0].id, real[0].id);
}

/// Every filter narrows the result; limit cuts it; order is by id.
pub async fn query_filters_by_stream_names_ids_correlation_and_limit(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let mut ids = Vec::new();
    for i in 0..10 {
        let stream = if i % 2 == 0 { "even" } else { "odd" };
        let name = if i % 3 == 0 { "Three" } else { "Other" };
        let e = s
            .append(
                Append::new(stream, vec![Message::new(name, json!({ "i": i }))])
                    .correlate(format!("c{}", i % 4)),
            )
            .await
            .unwrap();
        ids.push(e[0].id);
    }
    visible(s, ids.len()).await;
    let q = |q: Query| async move {
        s.query(&q)
            .await
            .unwrap()
            .iter()
            .map(|e| e.data["i"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(q(Query::new().stream("even")).await, vec![0, 2, 4, 6, 8]);
    assert_eq!(q(Query::new().names(["Three"])).await, vec![0, 3, 6, 9]);
    assert_eq!(
        q(Query::new().names(["Three", "Other"]).limit(3)).await,
        vec![0, 1, 2]
    );
    assert_eq!(q(Query::new().after(ids[6])).await, vec![7, 8, 9]);
    assert_eq!(q(Query::new().before(ids[2])).await, vec![0, 1]);
    assert_eq!(
        q(Query::new().after(ids[2]).before(ids[6])).await,
        vec![3, 4, 5]
    );
    assert_eq!(q(Query::new().correlation("c1")).await, vec![1, 5, 9]);
    assert_eq!(
        q(Query::new().stream("odd").names(["Three"]).after(ids[3])).await,
        vec![9]
    );
    assert_eq!(q(Query::new().stream("none")).await, Vec::<i64>::new());
    assert_eq!(q(Query::new().limit(0)).await, Vec::<i64>::new());
}

/// `created` bounds select by commit time on the store's clock.
pub async fn query_filters_by_creation_time(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    ping(s, "t", json!({"i": 0})).await;
    f.clock.advance(Duration::from_secs(10)).await;
    let mid = ping(s, "t", json!({"i": 1})).await;
    f.clock.advance(Duration::from_secs(10)).await;
    ping(s, "t", json!({"i": 2})).await;
    visible(s, 3).await;
    let t = mid.meta.created;
    let got = s.query(&Query::new().created_after(t)).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|e| e.data["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let got = s.query(&Query::new().created_before(t)).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|e| e.data["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0]
    );
}

/// Backward reads newest first, with every filter.
pub async fn query_reads_backward(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let a = pings(s, "a", 5).await;
    pings(s, "b", 3).await;
    visible(s, 8).await;
    let got: Vec<i64> = s
        .query(&Query::new().stream("a").backward().limit(2))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, vec![a[4], a[3]]);
    let all = s.query(&Query::new().backward()).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(all.len(), 8);
    let before: Vec<i64> = s
        .query(&Query::new().stream("a").backward().before(a[3]))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(before, vec![a[2], a[1], a[0]]);
}

/// Globs: `*` any run, `?` one character; SQL wildcards are literal.
pub async fn query_matches_stream_patterns(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    for stream in [
        "account-1",
        "account-22",
        "audit-1",
        "acc_x",
        "accXx",
        "100%",
        "1000",
    ] {
        ping(s, stream, json!({})).await;
    }
    visible(s, 7).await;
    let streams = |p: &'static str| async move {
        s.query(&Query::new().stream_pattern(p))
            .await
            .unwrap()
            .iter()
            .map(|e| e.stream.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(streams("account-*").await, vec!["account-1", "account-22"]);
    assert_eq!(streams("a*-1").await, vec!["account-1", "audit-1"]);
    assert_eq!(streams("account-?").await, vec!["account-1"]);
    assert_eq!(streams("acc_*").await, vec!["acc_x"], "`_` is literal");
    assert_eq!(streams("100%").await, vec!["100%"], "`%` is literal");
    assert_eq!(streams("*").await.len(), 7);
}

/// Visibility: a reader that always asks for ids after the last it saw
/// collects exactly the whole log while writers commit concurrently.
pub async fn a_reader_never_skips_an_event_while_writers_commit(b: &impl Backend) {
    let f = b.open().await;
    let writers = 4;
    let appends = 60;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let s = f.store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen: Vec<i64> = Vec::new();
            loop {
                let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                let after = seen.last().copied().unwrap_or(0);
                let got = s.query(&Query::new().after(after).limit(50)).await.unwrap();
                for e in &got {
                    assert!(e.id > after, "reader saw {} after {}", e.id, after);
                    seen.push(e.id);
                }
                if done && got.is_empty() {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = f.store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..appends {
                let m = (0..1 + n % 3)
                    .map(|p| Message::new("Ping", json!({"w": w, "n": n, "p": p})))
                    .collect();
                s.append(Append::new(format!("w-{w}"), m)).await.unwrap();
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let all: Vec<i64> = f
        .store
        .query(&Query::new())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(seen, all, "the reader skipped or reordered events");
}

/// A commit is signalled to subscribers.
pub async fn a_commit_changes_the_wake_signal(b: &impl Backend) {
    let f = b.open().await;
    let mut wake = f.store.wake();
    wake.borrow_and_update();
    ping(&*f.store, "a", json!({})).await;
    tokio::time::timeout(super::support::PATIENCE, wake.changed())
        .await
        .expect("no wake-up after a commit")
        .expect("wake channel closed");
}

/// Payload, meta, causation (its trace context included) and actor come
/// back exactly as written.
pub async fn data_and_meta_round_trip_unchanged(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let data = json!({"s": "é ✓ \"q\"", "n": 1.5, "big": 9007199254740993u64, "neg": -3, "a": [1, {"b": null}], "t": true});
    let causation = Causation {
        action: Some(crate::event::ActionRef {
            name: "deposit".into(),
            stream: "x".into(),
        }),
        event: Some(EventRef {
            id: 42,
            name: "Opened".into(),
            stream: "y".into(),
        }),
        trace: crate::trace::TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    };
    let actor = Actor {
        id: "u-1".into(),
        name: "Ann".into(),
    };
    let written = s
        .append(
            Append::new("x", vec![Message::new("Deposited", data.clone())])
                .correlate("corr-1")
                .caused_by(causation.clone())
                .by(actor.clone()),
        )
        .await
        .unwrap();
    let read = s.query(&Query::new().stream("x")).await.unwrap();
    let e = &read[0];
    assert_eq!(e.data, data);
    assert_eq!(e.name, "Deposited");
    assert_eq!(e.meta.correlation, "corr-1");
    assert_eq!(e.meta.causation, causation);
    assert_eq!(
        e.meta.trace(),
        causation.trace.as_ref(),
        "the trace context is kept"
    );
    assert_eq!(e.meta.actor, actor);
    assert_eq!(e.meta.created, written[0].meta.created);
    assert_eq!(**e, *written[0]);
    let ids: BTreeSet<i64> = read.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1);
}

/// Appends that do not check the version never conflict: writers racing on
/// one stream all succeed, with dense versions.
pub async fn appends_without_a_version_check_never_conflict(b: &impl Backend) {
    let f = b.open().await;
    let writers = 12;
    let each = 12;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..each {
                let n = 1 + (w + i) % 3;
                match s.append(Append::new("journal", msgs(n))).await {
                    Ok(events) => out.push(events.len()),
                    Err(e) => panic!("an unchecked append failed: {e}"),
                }
            }
            out
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().iter().sum::<usize>();
    }
    let all = f
        .store
        .query(&Query::new().stream("journal"))
        .await
        .unwrap();
    assert_eq!(all.len(), total);
    let versions: Vec<i64> = all.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (0..total as i64).collect::<Vec<_>>(),
        "versions are dense"
    );
}

/// An expected version that is not a version is refused, never read as "no
/// check", and appends nothing.
pub async fn an_expected_version_that_is_not_a_version_is_refused(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    s.append(Append::new("a", msgs(1))).await.unwrap();
    for v in [-1, -2, i64::MIN] {
        match s
            .append(Append::new("a", msgs(1)).expect(ExpectedVersion::Exact(v)))
            .await
        {
            Err(Error::InvalidInput(m)) => assert!(m.contains("not a version"), "{m}"),
            other => panic!("expected version {v} must be refused, got {other:?}"),
        }
    }
    assert_eq!(s.query(&Query::new().stream("a")).await.unwrap().len(), 1);
}

/// What one backend stores, every backend stores: payloads at the edges of
/// the limits round-trip unchanged.
pub async fn payloads_within_the_limits_round_trip_on_every_backend(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let mut deep = json!("bottom");
    for _ in 1..crate::limits::MAX_DEPTH {
        deep = json!([deep]);
    }
    let long_name = "n".repeat(crate::limits::MAX_NAME_BYTES);
    let cases = vec![
        (
            "edge",
            "Unicode ✓ 名前",
            json!({"emoji": "🦀", "rtl": "שלום", "combining": "e\u{301}", "nbsp": "\u{a0}"}),
        ),
        (
            "edge",
            "Numbers",
            json!({"max": i64::MAX, "min": i64::MIN, "u": u64::MAX, "f": 1.0e300, "tiny": 5e-324, "neg0": -0.0, "frac": 0.1}),
        ),
        (
            "edge",
            "Escapes",
            json!({"q\"k": "a\\b\"c", "ctl": "\u{1}\u{1f}\t\n\r", "slash": "/"}),
        ),
        ("edge", "Empty", json!({"": "", "arr": [], "obj": {}})),
        ("edge", "Scalars", json!(null)),
        ("edge", "Deep", deep),
        ("edge", "Big", json!({"s": "x".repeat(1 << 20)})),
        (long_name.as_str(), long_name.as_str(), json!(1)),
    ];
    for (stream, name, data) in &cases {
        let written = s
            .append(Append::new(
                *stream,
                vec![Message::new(*name, data.clone())],
            ))
            .await
            .unwrap_or_else(|e| panic!("`{name}` must be accepted: {e}"));
        let read = s
            .query(&Query::new().stream(*stream).backward().limit(1))
            .await
            .unwrap();
        assert_eq!(read[0].id, written[0].id);
        assert_eq!(&read[0].name, name);
        if *name == "Numbers" {
            // -0.0 may come back as 0 where a store keeps numbers as
            // decimals; everything else is exact.
            let mut want = data.clone();
            want["neg0"] = read[0].data["neg0"].clone();
            assert!(
                read[0].data["neg0"].as_f64() == Some(0.0),
                "{}",
                read[0].data
            );
            assert_eq!(read[0].data, want, "`{name}` changed on the way");
        } else {
            assert_eq!(&read[0].data, data, "`{name}` changed on the way");
        }
    }
}

/// What some backend could not store, index or read back, every backend
/// refuses at append with `InvalidInput` naming the limit, and appends
/// nothing.
pub async fn input_past_the_limits_is_refused_on_every_backend(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let mut too_deep = json!(1);
    for _ in 0..=crate::limits::MAX_DEPTH {
        too_deep = json!([too_deep]);
    }
    let mut nested_objects = json!({});
    for _ in 0..200 {
        nested_objects = json!({ "k": nested_objects });
    }
    let long = "n".repeat(crate::limits::MAX_NAME_BYTES + 1);
    let cases: Vec<(&str, Append, &str)> = vec![
        (
            "deep arrays",
            Append::new("a", vec![Message::new("E", too_deep)]),
            "levels",
        ),
        (
            "deep objects",
            Append::new("a", vec![Message::new("E", nested_objects)]),
            "levels",
        ),
        (
            "NUL in data",
            Append::new("a", vec![Message::new("E", json!({"s": "a\u{0}b"}))]),
            "U+0000",
        ),
        (
            "NUL in a key",
            Append::new("a", vec![Message::new("E", json!({"a\u{0}": 1}))]),
            "U+0000",
        ),
        (
            "NUL in a name",
            Append::new("a", vec![Message::new("E\u{0}", json!(1))]),
            "U+0000",
        ),
        (
            "NUL in a stream",
            Append::new("a\u{0}", vec![Message::new("E", json!(1))]),
            "U+0000",
        ),
        (
            "a long stream",
            Append::new(long.as_str(), vec![Message::new("E", json!(1))]),
            "bytes",
        ),
        (
            "a long name",
            Append::new("a", vec![Message::new(long.as_str(), json!(1))]),
            "bytes",
        ),
        (
            "an empty stream",
            Append::new("", vec![Message::new("E", json!(1))]),
            "empty",
        ),
        (
            "an empty name",
            Append::new("a", vec![Message::new("", json!(1))]),
            "empty",
        ),
        (
            "a long key",
            Append::new("a", vec![Message::new("E", json!(1))]).idempotent(long.clone()),
            "bytes",
        ),
    ];
    for (what, append, says) in cases {
        match s.append(append).await {
            Err(Error::InvalidInput(m)) => assert!(m.contains(says), "{what}: {m}"),
            other => panic!("{what} must be refused with InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(s.head().await.unwrap(), 0, "nothing was appended");
}

/// Extreme ids and bounds never panic, wrap or spin: they are just empty or
/// full ranges.
pub async fn extreme_bounds_are_plain_ranges(b: &impl Backend) {
    let f = b.open().await;
    let s = &*f.store;
    let ids = pings(s, "a", 3).await;
    visible(s, 3).await;
    let n = |q: Query| async move { s.query(&q).await.unwrap().len() };
    assert_eq!(n(Query::new().after(i64::MAX)).await, 0);
    assert_eq!(n(Query::new().after(i64::MIN)).await, 3);
    assert_eq!(n(Query::new().before(i64::MIN)).await, 0);
    assert_eq!(n(Query::new().before(i64::MAX)).await, 3);
    assert_eq!(n(Query::new().after(i64::MAX).before(i64::MIN)).await, 0);
    assert_eq!(n(Query::new().limit(usize::MAX)).await, 3);
    assert_eq!(
        n(Query::new()
            .stream("a")
            .after(i64::MIN)
            .before(i64::MAX)
            .limit(usize::MAX))
        .await,
        3
    );
    assert_eq!(
        n(Query::new().stream("a").backward().before(i64::MIN)).await,
        0
    );
    assert_eq!(n(Query::new().backward().after(i64::MAX)).await, 0);
    assert_eq!(n(Query::new().after(ids[2]).limit(usize::MAX)).await, 0);
}
