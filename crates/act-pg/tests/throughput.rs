//! Throughput of correlation on PostgreSQL, the way a broker backfills a
//! reaction added later: read a page of 1000 events, enqueue their items,
//! repeat. Ignored by default (it takes a while); run with
//! `cargo test -p act-pg --release --test throughput -- --ignored --nocapture`
//! (`ACT_BENCH_EVENTS`, default 200000; `ACT_BENCH_QUEUES`, default 1000).

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use act::{
    Append, Claim, Correlation, EventStore, Message, Query, QueueStore, Settlement, Subscription,
    Work,
};
use common::{fresh_schema, open, options, DropSchema};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose"]
async fn backfill_correlation_throughput() {
    let events = env("ACT_BENCH_EVENTS", 200_000);
    let queues = env("ACT_BENCH_QUEUES", 1000);
    let schema = fresh_schema("bench");
    let offset = Arc::new(AtomicI64::new(0));
    let mut o = options(&schema, &offset);
    o.listen = false;
    let store = Arc::new(open(o).await);
    let _guard = DropSchema { schema, offset };

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for b in 0..events / 4 / 1000 {
                let messages = (0..1000)
                    .map(|i| Message::new("Ping", json!({ "i": i })))
                    .collect();
                store
                    .append(Append::new(format!("s-{w}-{b}"), messages))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let head = store.head().await.unwrap();
    println!("appended {events} events in {:?}", started.elapsed());

    store
        .subscribe(&[Subscription {
            name: "late".into(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        }])
        .await
        .unwrap();
    let started = Instant::now();
    let mut from = 0;
    let mut calls = Vec::new();
    let mut reads = Vec::new();
    let mut n = 0;
    loop {
        let t = Instant::now();
        let page = store
            .query(
                &Query::new()
                    .after(from)
                    .before(head + 1)
                    .names(["Ping"])
                    .limit(1000),
            )
            .await
            .unwrap();
        reads.push(t.elapsed());
        let to = page.last().map_or(head, |e| e.id);
        let work: Vec<Work> = page
            .iter()
            .map(|e| Work {
                stream: format!("q{}", (e.id as usize / 7) % queues),
                event: e.id,
                reaction: "late".into(),
                priority: 0,
            })
            .collect();
        n += page.len();
        let t = Instant::now();
        let after = store
            .enqueue(&Correlation {
                reactions: vec!["late".into()],
                replay: None,
                from,
                to,
                work,
            })
            .await
            .unwrap();
        calls.push(t.elapsed());
        assert_eq!(after.positions, vec![Some(to)]);
        from = to;
        if page.len() < 1000 {
            break;
        }
    }
    let took = started.elapsed();
    println!(
        "correlated {n} events into {queues} queues in {took:?}: {:.0} events/s; read p50 {:?} p99 {:?}; enqueue p50 {:?} p99 {:?} max {:?}",
        n as f64 / took.as_secs_f64(),
        percentile(reads.clone(), 0.5),
        percentile(reads, 0.99),
        percentile(calls.clone(), 0.5),
        percentile(calls.clone(), 0.99),
        calls.iter().max().unwrap()
    );

    // Then drain: claims of 100 queues x 100 events, acked.
    let started = Instant::now();
    let mut delivered = 0;
    let mut claims = Vec::new();
    loop {
        let t = Instant::now();
        let got = store
            .claim(&Claim {
                owner: "b".into(),
                queues: 100,
                events: 100,
                lease: Duration::from_secs(30),
                reactions: vec!["late".into()],
            })
            .await
            .unwrap();
        claims.push(t.elapsed());
        if got.is_empty() {
            break;
        }
        let acks: Vec<Settlement> = got
            .iter()
            .map(|b| Settlement::ack(&b.lease, b.events.last().unwrap().event.id))
            .collect();
        delivered += got.iter().map(|b| b.events.len()).sum::<usize>();
        assert!(store.settle(&acks).await.unwrap().iter().all(Result::is_ok));
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let took = started.elapsed();
    println!(
        "claimed and acked {delivered} events in {took:?}: {:.0} events/s; claim p50 {:?} p99 {:?}",
        delivered as f64 / took.as_secs_f64(),
        percentile(claims.clone(), 0.5),
        percentile(claims, 0.99)
    );
}
