//! Redis-specific behaviour on the shared server (each test under its own
//! prefix): scripts survive `SCRIPT FLUSH`, broken records are decode
//! errors naming the event, schema markers are honoured, wake-ups cross
//! processes, and the store's clock is the server's.

mod support;

use std::time::Duration;

use act::{Append, Claim, Error, EventStore, Message, Query, QueueStore, Settlement, Work};
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

fn claim(owner: &str) -> Claim {
    Claim {
        owner: owner.into(),
        queues: 10,
        events: 10,
        lease: Duration::from_secs(30),
    }
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
    let work = |e: i64| Work {
        stream: "q".into(),
        event: e,
        priority: 0,
    };
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    s.enqueue(&[work(first[0].id), work(second[0].id)], 0, second[0].id)
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let got = s.claim(&claim("A")).await.unwrap();
    assert_eq!(got[0].events.len(), 2);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let r = s
        .settle(&[Settlement::ack(&got[0].lease, second[0].id)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    assert_eq!(s.query(&Query::new()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_record_that_is_not_json_is_a_decode_error_naming_the_event() {
    let prefix = support::fresh_prefix("decode");
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let s = open(&options(&prefix)).await;
    let e = s.append(ping("a", 2)).await.unwrap();
    let id = e[1].id;
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:events"))
        .arg(id)
        .arg("not json {")
        .query(&mut raw())
        .unwrap();
    match s.query(&Query::new().stream("a")).await {
        Err(Error::Decode { what, .. }) => assert_eq!(what, format!("event {id}")),
        other => panic!("expected a decode error, got {other:?}"),
    }
    // A record that is JSON but not an event names the event and its name.
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:events"))
        .arg(id)
        .arg(r#"{"name":"Ping","stream":7}"#)
        .query(&mut raw())
        .unwrap();
    match s.query(&Query::new().after(e[0].id)).await {
        Err(Error::Decode { what, .. }) => assert_eq!(what, format!("event {id} `Ping`")),
        other => panic!("expected a decode error, got {other:?}"),
    }
    // The first event still reads.
    let ok = s.query(&Query::new().limit(1)).await.unwrap();
    assert_eq!(ok[0].id, e[0].id);
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
    woken.borrow_and_update();
    a.enqueue(
        &[Work {
            stream: "q".into(),
            event: e[0].id,
            priority: 0,
        }],
        0,
        e[0].id,
    )
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
