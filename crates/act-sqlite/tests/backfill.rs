//! Throughput of a backfill: a reaction added to a log of 1,000,000 events
//! correlates it in pages of 1,000, as the broker does (one query of the
//! page, one enqueue step). Ignored by default (it appends a million events);
//! run it in release:
//!
//! ```text
//! cargo test -p act-sqlite --release --test backfill -- --ignored --nocapture
//! ```
//!
//! `BACKFILL_EVENTS` and `BACKFILL_QUEUES` change the size (defaults
//! 1,000,000 and 100). The target is at least 100,000 events/s.

use std::time::{Duration, Instant};

use act::{
    Append, Correlation, EventStore, Message, Query, QueueFilter, QueueStore, Subscription, Work,
};
use act_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: appends a million events"]
async fn a_late_reaction_backfills_at_least_100k_events_per_second() {
    let total = env("BACKFILL_EVENTS", 1_000_000);
    let queues = env("BACKFILL_QUEUES", 100);
    let page = 1000;
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        watch_every: None,
        ..Default::default()
    };
    let s = SqliteStore::open_with(dir.path().join("act.db"), options)
        .await
        .unwrap();
    let t = Instant::now();
    let mut n = 0;
    while n < total {
        let batch = (total - n).min(act::limits::MAX_EVENTS_PER_APPEND);
        let stream = format!("s{}", n / batch);
        let messages = (0..batch)
            .map(|i| Message::new("Ping", json!({ "i": n + i })))
            .collect();
        s.append(Append::new(stream, messages)).await.unwrap();
        n += batch;
    }
    let head = s.head().await.unwrap();
    eprintln!("appended {total} events in {:?}", t.elapsed());
    s.subscribe(&[Subscription {
        name: "late".into(),
        events: vec!["Ping".into()],
        target: None,
        start: 0,
    }])
    .await
    .unwrap();

    let t = Instant::now();
    let mut enqueueing = Duration::ZERO;
    let mut from = 0;
    while from < head {
        let events = s
            .query(
                &Query::new()
                    .after(from)
                    .before(head + 1)
                    .names(vec!["Ping".to_string()])
                    .limit(page),
            )
            .await
            .unwrap();
        let to = if events.len() == page {
            events[page - 1].id
        } else {
            head
        };
        let work = events
            .iter()
            .map(|e| Work {
                // A dynamic resolver spreading the log over the queues.
                stream: format!("q-{}", e.id.rem_euclid(queues as i64)),
                event: e.id,
                reaction: "late".into(),
                priority: 0,
            })
            .collect();
        let e = Instant::now();
        let after = s
            .enqueue(&Correlation {
                reactions: vec!["late".into()],
                replay: None,
                from,
                to,
                work,
            })
            .await
            .unwrap();
        enqueueing += e.elapsed();
        assert_eq!(after.positions, vec![Some(to)]);
        from = to;
    }
    let took = t.elapsed();
    let rate = head as f64 / took.as_secs_f64();
    eprintln!(
        "backfilled {head} events into {queues} queues in {took:?}: {rate:.0} events/s ({:?} of it in enqueue)",
        enqueueing
    );
    let listed = s.queues(&QueueFilter::default()).await.unwrap();
    assert_eq!(listed.len(), queues.min(total));
    assert_eq!(listed.iter().map(|q| q.lag).sum::<u64>(), head as u64);
    assert!(rate >= 100_000.0, "{rate:.0} events/s is below 100,000");
}

/// The `act bench` backfill workload through the broker: 1,000,000 events
/// in blocks of 1,000 over 100 streams, a reaction added with
/// `from_beginning()` beside a caught-up one, delivered while it
/// correlates. Reports how fast its checkpoint reaches the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: appends a million events"]
async fn a_late_reaction_backfills_through_the_broker() {
    use act::{Act, BrokerOptions, Reaction};
    use std::sync::Arc;
    let total = env("BACKFILL_EVENTS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn act::Store> =
        Arc::new(SqliteStore::open(dir.path().join("act.db")).await.unwrap());
    let mut i = 0;
    while i < total {
        let stream = format!("s{}", (i / 1000) % 100);
        let n = (total - i).min(1000);
        let messages = (i..i + n)
            .map(|k| Message::new("Ping", json!({ "i": k })))
            .collect();
        store.append(Append::new(stream, messages)).await.unwrap();
        i += n;
    }
    let live = Reaction::on("Probe")
        .named("live")
        .to_stream("live")
        .from_now()
        .handle(|_e, _ctx| async { Ok(()) });
    let v1 = Act::builder(store.clone())
        .reaction(live.clone())
        .build()
        .unwrap();
    v1.register().await.unwrap();
    let v2 = Act::builder(store.clone())
        .reaction(live)
        .reaction(
            Reaction::on("Ping")
                .named("history")
                .to(|e| Some(format!("h-{}", e.stream)))
                .from_beginning()
                .handle(|_e, _ctx| async { Ok(()) }),
        )
        .build()
        .unwrap();
    v2.register().await.unwrap();
    let head = store.head().await.unwrap();
    let handle = v2.broker(BrokerOptions::default()).start();
    let started = Instant::now();
    loop {
        let at = store
            .subscriptions()
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.name == "history")
            .map_or(0, |x| x.checkpoint);
        if at >= head {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "stuck at {at} of {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        store
            .append(Append::new("probe", vec![Message::new("Probe", json!({}))]))
            .await
            .unwrap();
    }
    let took = started.elapsed();
    let rate = head as f64 / took.as_secs_f64();
    handle.shutdown().await.unwrap();
    eprintln!("the broker correlated {head} events of history in {took:?}: {rate:.0} events/s");
    assert!(rate >= 100_000.0, "{rate:.0} events/s is below 100,000");
}
