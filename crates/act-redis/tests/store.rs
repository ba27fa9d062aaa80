//! Redis-specific behaviour on the shared server (each test under its own
//! prefix): scripts survive `SCRIPT FLUSH`, broken records are decode
//! errors naming the event, schema markers are honoured, wake-ups cross
//! processes, the store's clock is the server's, input limits and extreme
//! bounds are handled like everywhere else, and queues waiting for a
//! reaction stay out of other brokers' way.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use act::{
    Act, Append, BrokerOptions, Claim, Correlation, Error, EventStore, ExpectedVersion, Message,
    Query, QueueFilter, QueueStore, Reaction, Settlement, Store, Subscription, Work,
};
use act_redis::RedisStore;
use serde_json::json;

use support::{open, options, raw, Cleanup};

fn ping(stream: &str, n: usize) -> Append {
    Append::new(
        stream,
        (0..n)
            .map(|i| Message::new("Ping", json!({ "i": i })))
            .collect(),
    )
}

fn claim(owner: &str, reactions: &[&str]) -> Claim {
    Claim {
        owner: owner.into(),
        queues: 10,
        events: 10,
        lease: Duration::from_secs(30),
        reactions: reactions.iter().map(|r| r.to_string()).collect(),
    }
}

fn work(stream: &str, event: i64, reaction: &str) -> Work {
    Work {
        stream: stream.into(),
        event,
        reaction: reaction.into(),
        priority: 0,
    }
}

fn step(reaction: &str, from: i64, to: i64, work: Vec<Work>) -> Correlation {
    Correlation {
        reactions: vec![reaction.into()],
        replay: None,
        from,
        to,
        work,
    }
}

async fn subscribe(s: &RedisStore, names: &[&str]) {
    let subs: Vec<Subscription> = names
        .iter()
        .map(|n| Subscription {
            name: n.to_string(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        })
        .collect();
    s.subscribe(&subs).await.unwrap();
}

#[tokio::test]
async fn scripts_are_loaded_again_after_script_flush() {
    let prefix = support::fresh_prefix("flush");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let first = s.append(ping("a", 1)).await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let second = s.append(ping("a", 1)).await.unwrap();
    assert_eq!(second[0].id, first[0].id + 1);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    subscribe(&s, &["r"]).await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let items = vec![work("q", first[0].id, "r"), work("q", second[0].id, "r")];
    s.enqueue(&step("r", 0, second[0].id, items)).await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let got = s.claim(&claim("A", &["r"])).await.unwrap();
    assert_eq!(got[0].events.len(), 2);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let r = s
        .settle(&[Settlement::ack(&got[0].lease, second[0].id)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    assert_eq!(s.query(&Query::new()).await.unwrap().len(), 2);
}

fn set_record(prefix: &str, id: i64, record: &str) {
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:events"))
        .arg(id)
        .arg(record)
        .query(&mut raw())
        .unwrap();
}

/// JSON nested deeper than serde_json reads back, as an older act-rs could
/// have stored it before the limits.
fn too_deep() -> String {
    let mut deep = String::from("1");
    for _ in 0..200 {
        deep = format!("[{deep}]");
    }
    deep
}

#[tokio::test]
async fn a_record_that_cannot_be_read_back_is_returned_marked_undecodable() {
    let prefix = support::fresh_prefix("decode");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let e = s.append(ping("a", 3)).await.unwrap();
    let ids: Vec<i64> = e.iter().map(|e| e.id).collect();
    set_record(&prefix, ids[0], "not json {");
    // JSON, but not an event: what can be read (the name) is kept.
    set_record(&prefix, ids[1], r#"{"name":"Ping","stream":7}"#);
    // An event whose data is too deep: stream, version and name are kept.
    let record = format!(
        r#"{{"stream":"a","version":2,"name":"Ping","created":1700000000000000,"correlation":"c","data":{}}}"#,
        too_deep()
    );
    set_record(&prefix, ids[2], &record);
    let got = s.query(&Query::new().stream("a")).await.unwrap();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let why: Vec<&str> = got
        .iter()
        .map(|e| e.undecodable_error().expect("marked undecodable"))
        .collect();
    assert!(
        why.iter().all(|w| w.contains("cannot be read back")),
        "{why:?}"
    );
    assert!(why[2].contains("recursion limit"), "{}", why[2]);
    // Read through the stream's index: the stream is known even when the
    // record does not say it.
    assert_eq!((got[0].stream.as_str(), got[0].name.as_str()), ("a", ""));
    assert_eq!(
        (got[1].stream.as_str(), got[1].name.as_str()),
        ("a", "Ping")
    );
    assert_eq!(
        (got[2].stream.as_str(), got[2].version, got[2].name.as_str()),
        ("a", 2, "Ping")
    );
    let raw_text = got[0].data[act::UNDECODABLE]["raw"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(raw_text, "not json {");
    // A missing record (a log with a hole) reads the same way.
    let _: () = redis::cmd("HDEL")
        .arg(format!("{{{prefix}}}:events"))
        .arg(ids[0])
        .query(&mut raw())
        .unwrap();
    let first = s.query(&Query::new().limit(1)).await.unwrap();
    assert_eq!(first[0].id, ids[0]);
    assert!(first[0].undecodable_error().is_some());
    // Events around them read as usual.
    let more = s.append(ping("a", 1)).await.unwrap();
    let last = s.query(&Query::new().after(ids[2])).await.unwrap();
    assert_eq!(last[0].id, more[0].id);
    assert_eq!(last[0].undecodable_error(), None);
}

#[tokio::test]
async fn a_prefix_written_by_a_newer_version_is_refused() {
    let prefix = support::fresh_prefix("schema");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let opts = options(&prefix);
    drop(open(&opts).await);
    let marker: i64 = redis::cmd("HGET")
        .arg(format!("{{{prefix}}}:meta"))
        .arg("schema")
        .query(&mut raw())
        .unwrap();
    assert_eq!(marker, act_redis::SCHEMA_VERSION);
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:meta"))
        .arg("schema")
        .arg(act_redis::SCHEMA_VERSION + 1)
        .query(&mut raw())
        .unwrap();
    match RedisStore::open_with(support::URL, opts).await {
        Err(Error::Schema { message, .. }) => {
            assert!(message.contains("newer act-rs"), "{message}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn act_keys_without_a_marker_are_not_touched() {
    let prefix = support::fresh_prefix("foreign");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let _: () = redis::cmd("SET")
        .arg(format!("{{{prefix}}}:seq"))
        .arg(12)
        .query(&mut raw())
        .unwrap();
    match RedisStore::open_with(support::URL, options(&prefix)).await {
        Err(Error::Schema { message, .. }) => {
            assert!(message.contains("no schema marker"), "{message}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_commit_in_one_process_wakes_another() {
    let prefix = support::fresh_prefix("wake");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let opts = options(&prefix);
    let a = open(&opts).await;
    let b = open(&opts).await;
    let mut woken = b.wake();
    woken.borrow_and_update();
    let e = a.append(ping("a", 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken.changed())
        .await
        .expect("no wake-up from the other store's append")
        .unwrap();
    // Enqueued work wakes too.
    subscribe(&a, &["r"]).await;
    woken.borrow_and_update();
    a.enqueue(&step("r", 0, e[0].id, vec![work("q", e[0].id, "r")]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken.changed())
        .await
        .expect("no wake-up from the other store's enqueue")
        .unwrap();
}

#[tokio::test]
async fn event_times_and_leases_come_from_the_server_clock_plus_the_offset() {
    let prefix = support::fresh_prefix("clock");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let opts = options(&prefix);
    let s = open(&opts).await;
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut raw()).unwrap();
    let server = chrono::DateTime::from_timestamp_micros(secs * 1_000_000 + micros).unwrap();
    let e = s.append(ping("a", 1)).await.unwrap();
    let skew = (e[0].meta.created - server).num_milliseconds().abs();
    assert!(
        skew < 5_000,
        "created is {skew} ms away from the server's TIME"
    );
    opts.clock_offset
        .fetch_add(3_600_000_000, std::sync::atomic::Ordering::SeqCst);
    let later = s.append(ping("a", 1)).await.unwrap();
    let moved = (later[0].meta.created - e[0].meta.created).num_minutes();
    assert!(
        (59..=61).contains(&moved),
        "the offset moved time by {moved} min"
    );
}

#[tokio::test]
async fn appends_are_checked_against_the_limits_before_anything_is_written() {
    let prefix = support::fresh_prefix("limits");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    for bad in [
        Append::new("a\0b", vec![Message::new("Ping", json!({}))]),
        Append::new("a", vec![Message::new("Ping", json!({"k": "v\u{0}"}))]),
        Append::new("a", vec![Message::new("", json!({}))]),
        Append::new("a", vec![Message::new("Ping", json!({}))]).expect(ExpectedVersion::Exact(-1)),
    ] {
        match s.append(bad).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(
        s.head().await.unwrap(),
        0,
        "a refused append writes nothing"
    );
}

#[tokio::test]
async fn enqueue_refuses_queue_names_no_store_can_hold_and_events_not_in_the_log() {
    let prefix = support::fresh_prefix("names");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let e = s.append(ping("a", 1)).await.unwrap();
    subscribe(&s, &["r"]).await;
    let long = "q".repeat(act::limits::MAX_NAME_BYTES + 1);
    for name in ["", "a\0b", long.as_str()] {
        match s
            .enqueue(&step("r", 0, e[0].id, vec![work(name, e[0].id, "r")]))
            .await
        {
            Err(Error::InvalidInput(m)) => assert!(m.contains("queue name"), "{m}"),
            other => panic!("expected InvalidInput for `{name}`, got {other:?}"),
        }
    }
    for event in [0, e[0].id + 1, i64::MAX, i64::MIN, 1 << 53] {
        match s
            .enqueue(&step("r", 0, e[0].id, vec![work("q", event, "r")]))
            .await
        {
            Err(Error::InvalidInput(m)) => assert!(m.contains(&event.to_string()), "{m}"),
            other => panic!("expected InvalidInput for event {event}, got {other:?}"),
        }
    }
    let subs = s.subscriptions().await.unwrap();
    assert_eq!(subs[0].checkpoint, 0, "a refused step moves nothing");
    assert!(s.queues(&QueueFilter::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn queries_with_extreme_bounds_neither_panic_nor_wrap() {
    let prefix = support::fresh_prefix("bounds");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let e = s.append(ping("a", 3)).await.unwrap();
    let ids: Vec<i64> = e.iter().map(|e| e.id).collect();
    let got = |q: Query| {
        let s = &s;
        async move {
            s.query(&q)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    for base in [Query::new(), Query::new().stream("a")] {
        assert!(got(base.clone().after(i64::MAX)).await.is_empty());
        assert!(got(base.clone().after(i64::MAX - 1)).await.is_empty());
        assert!(got(base.clone().before(i64::MIN)).await.is_empty());
        assert!(got(base.clone().before(i64::MIN + 1)).await.is_empty());
        assert!(got(base.clone().before(1)).await.is_empty());
        assert_eq!(got(base.clone().after(i64::MIN)).await, ids);
        assert_eq!(got(base.clone().before(i64::MAX)).await, ids);
        assert_eq!(
            got(base
                .clone()
                .after(i64::MIN)
                .before(i64::MAX)
                .limit(usize::MAX))
            .await,
            ids
        );
        let mut back = ids.clone();
        back.reverse();
        assert_eq!(
            got(base.clone().before(i64::MAX).backward().limit(usize::MAX)).await,
            back
        );
        assert!(got(base.clone().after(i64::MAX).backward())
            .await
            .is_empty());
        assert!(got(base.clone().limit(0)).await.is_empty());
    }
    let all = s
        .queues(&QueueFilter {
            limit: Some(usize::MAX),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(all.is_empty());
}

/// Queues waiting for a reaction a broker lacks sit in their own index: a
/// claim by that broker neither leases nor re-examines them, and finds the
/// queue it can run behind thousands of them.
#[tokio::test]
async fn queues_waiting_for_a_reaction_do_not_hold_up_brokers_without_it() {
    let prefix = support::fresh_prefix("waiting");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let n = 2000;
    let e = s.append(ping("a", n + 1)).await.unwrap();
    subscribe(&s, &["old", "new"]).await;
    let names: Vec<String> = (0..n).map(|i| format!("w{i:05}")).collect();
    let items: Vec<Work> = names
        .iter()
        .zip(&e)
        .map(|(q, e)| work(q, e.id, "new"))
        .collect();
    let last = e[n].id;
    s.enqueue(&step("new", 0, last, items)).await.unwrap();
    s.enqueue(&step("old", 0, last, vec![work("late", last, "old")]))
        .await
        .unwrap();
    // The first claim by an old broker marks every queue ahead of `late`
    // as waiting (it has to look at each once), and takes `late`.
    let first = s
        .claim(&Claim {
            queues: 1,
            ..claim("v1", &["old"])
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].lease.stream, "late");
    let waiting = s.queues(&QueueFilter::default()).await.unwrap();
    assert_eq!(
        waiting
            .iter()
            .filter(|q| q.waiting.as_deref() == Some("new"))
            .count(),
        n
    );
    let tokens: Vec<i64> = waiting
        .iter()
        .filter(|q| q.stream.starts_with('w'))
        .map(|q| q.token)
        .collect();
    // Later claims by old brokers do not look at them again: nothing is due.
    s.settle(&[Settlement::ack(&first[0].lease, last)])
        .await
        .unwrap();
    assert!(s.claim(&claim("v1", &["old"])).await.unwrap().is_empty());
    assert_eq!(s.next_due(&["old".to_string()]).await.unwrap(), None);
    assert_eq!(
        s.next_due(&["new".to_string()]).await.unwrap(),
        Some(Duration::ZERO)
    );
    let after: Vec<i64> = s
        .queues(&QueueFilter {
            after: Some("v".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|q| q.token)
        .collect();
    assert_eq!(after, tokens, "waiting queues were not leased");
    // A broker with the reaction takes them, in claim order.
    let got = s
        .claim(&Claim {
            queues: 3,
            ..claim("v2", &["old", "new"])
        })
        .await
        .unwrap();
    let streams: Vec<&str> = got.iter().map(|b| b.lease.stream.as_str()).collect();
    assert_eq!(streams, vec!["w00000", "w00001", "w00002"]);
}

/// A reaction added later backfills in pages of about a thousand items, one
/// script each; each page costs the same however many items came before.
#[tokio::test]
async fn a_backfill_page_costs_the_same_late_as_early() {
    let prefix = support::fresh_prefix("backfill");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let pages = 30;
    let page = 1000;
    for _ in 0..pages {
        s.append(ping("a", page)).await.unwrap();
    }
    subscribe(&s, &["late"]).await;
    let mut times = Vec::new();
    for p in 0..pages {
        let from = (p * page) as i64;
        let items: Vec<Work> = (1..=page as i64)
            .map(|i| work(&format!("q{}", i % 10), from + i, "late"))
            .collect();
        let started = std::time::Instant::now();
        let after = s
            .enqueue(&step("late", from, from + page as i64, items))
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(after.positions, vec![Some(from + page as i64)]);
    }
    let lag: u64 = s
        .queues(&QueueFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|q| q.lag)
        .sum();
    assert_eq!(lag, (pages * page) as u64);
    // Medians, so a pause of the shared machine does not decide it.
    let median = |t: &[Duration]| {
        let mut t = t.to_vec();
        t.sort();
        t[t.len() / 2]
    };
    let early = median(&times[..7]);
    let late = median(&times[pages - 7..]);
    assert!(
        late < early * 4 + Duration::from_millis(50),
        "a late page took {late:?}, an early one {early:?}"
    );
}

/// Promise 11: a record that cannot be read back stops only the queues it
/// reaches: the broker blocks them at it with the decode error, and every
/// other event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_blocks_only_the_queue_it_reaches() {
    let prefix = support::fresh_prefix("poison");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s: Arc<dyn Store> = Arc::new(open(&options(&prefix)).await);
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
        ids.push(s.append(ping(stream, 1)).await.unwrap()[0].id);
    }
    let record = format!(
        r#"{{"stream":"a","version":1,"name":"Ping","created":1700000000000000,"correlation":"c","data":{}}}"#,
        too_deep()
    );
    set_record(&prefix, ids[2], &record);
    app.broker(BrokerOptions::default().poll(Duration::from_millis(50)))
        .run_once()
        .await
        .unwrap();
    // In order per queue; across queues, any order.
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
