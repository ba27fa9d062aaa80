//! The broker's metrics agree with its `Stats` and with the store. One
//! recording test in its own binary (the recorder is global to the
//! process), and a check of the docs' list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::metrics::{self as m, sample};
use act::{
    Act, Append, Backoff, BrokerOptions, EventStore, HandlerError, MemoryStore, Message,
    QueueFilter, QueueStore, Reaction, Store,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use serde_json::json;

fn quick() -> Backoff {
    Backoff {
        base: Duration::from_millis(1),
        factor: 1.0,
        cap: Duration::from_millis(1),
        jitter: 0.0,
    }
}

type Seen = HashMap<(MetricKind, String, Option<String>), DebugValue>;

fn snapshot(s: &metrics_util::debugging::Snapshotter) -> Seen {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v): (CompositeKey, _, _, DebugValue)| {
            let key = k.key();
            let reaction = key
                .labels()
                .find(|l| l.key() == m::REACTION_LABEL)
                .map(|l| l.value().to_string());
            ((k.kind(), key.name().to_string(), reaction), v)
        })
        .collect()
}

fn counter(seen: &Seen, name: &str, reaction: Option<&str>) -> u64 {
    match seen.get(&(
        MetricKind::Counter,
        name.to_string(),
        reaction.map(str::to_string),
    )) {
        Some(DebugValue::Counter(n)) => *n,
        _ => 0,
    }
}

fn counter_sum(seen: &Seen, name: &str) -> u64 {
    seen.iter()
        .filter(|((k, n, _), _)| *k == MetricKind::Counter && n == name)
        .map(|(_, v)| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_stats_and_the_store() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    m::describe();

    let store = Arc::new(MemoryStore::new());
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let calls = flaky_calls.clone();
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Ping")
                .named("per-stream")
                .to(|e| Some(format!("copy-{}", e.stream)))
                .handle(|_e, _ctx| async { Ok(()) }),
        )
        .reaction(
            Reaction::on("Ping")
                .named("flaky")
                .to_stream("flaky-q")
                .backoff(quick())
                .handle(move |_e, _ctx| {
                    let calls = calls.clone();
                    async move {
                        // Every other call fails: each event is retried once.
                        if calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                            Err(HandlerError::transient("flaky"))
                        } else {
                            Ok(())
                        }
                    }
                }),
        )
        .reaction(
            Reaction::on("Poison")
                .named("poisoned")
                .to(|e| Some(format!("poison-{}", e.stream)))
                .handle(|_e, _ctx| async { Err(HandlerError::permanent("bad input")) }),
        )
        .build()
        .unwrap();
    for s in ["a", "b", "c"] {
        for _ in 0..2 {
            store
                .append(Append::new(s, vec![Message::new("Ping", json!({}))]))
                .await
                .unwrap();
        }
    }
    for s in ["x", "y"] {
        store
            .append(Append::new(s, vec![Message::new("Poison", json!({}))]))
            .await
            .unwrap();
    }
    let stats = app.broker(BrokerOptions::default()).settle().await.unwrap();
    let seen = snapshot(&snapshotter);

    // 6 events to per-stream, 6 successes (and 6 failures) of flaky.
    assert_eq!(stats.reactions, 12);
    assert_eq!(
        counter(&seen, m::REACTIONS_DELIVERED, Some("per-stream")),
        6
    );
    assert_eq!(counter(&seen, m::REACTIONS_DELIVERED, Some("flaky")), 6);
    assert_eq!(counter_sum(&seen, m::REACTIONS_DELIVERED), stats.reactions);
    assert_eq!(counter(&seen, m::HANDLER_FAILURES, Some("flaky")), 6);
    assert_eq!(counter(&seen, m::HANDLER_FAILURES, Some("poisoned")), 2);

    assert_eq!(counter(&seen, m::RETRIES, Some("flaky")), stats.retries);
    assert_eq!(counter_sum(&seen, m::RETRIES), stats.retries);
    assert_eq!(stats.retries, 6);

    let blocked = store
        .queues(&QueueFilter {
            blocked: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(blocked.len(), 2);
    assert_eq!(counter(&seen, m::BLOCKS, Some("poisoned")), 2);
    assert_eq!(counter_sum(&seen, m::BLOCKS), stats.blocked);
    assert_eq!(stats.blocked, 2);

    assert_eq!(counter(&seen, m::EVENTS_ACKNOWLEDGED, None), stats.events);
    assert_eq!(counter(&seen, m::CLAIMS, None), stats.claims);
    assert_eq!(counter(&seen, m::EVENTS_CORRELATED, None), stats.correlated);
    assert_eq!(counter_sum(&seen, m::SKIPS), stats.skipped);
    assert_eq!(
        counter(&seen, m::SETTLEMENTS_REJECTED, None),
        stats.rejected
    );
    assert_eq!(counter(&seen, m::STORE_ERRORS, None), stats.errors);

    let histogram = |name: &str, r: &str| match seen.get(&(
        MetricKind::Histogram,
        name.to_string(),
        Some(r.to_string()),
    )) {
        Some(DebugValue::Histogram(v)) => v.len(),
        _ => 0,
    };
    assert_eq!(histogram(m::HANDLER_DURATION, "flaky"), 12, "one per call");
    assert_eq!(histogram(m::COMMIT_TO_HANDLER, "per-stream"), 6);
    match seen.get(&(MetricKind::Gauge, m::LEASES_HELD.to_string(), None)) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 0.0, "every lease given back"),
        other => panic!("no leases gauge: {other:?}"),
    }

    // Store-wide gauges: the two poisoned queues hold their event each.
    let s = sample(&**app.store(), &[]).await.unwrap();
    assert_eq!(s.queues_blocked, 2);
    assert_eq!(s.queues_pending, 2);
    assert_eq!(s.events_pending, 2);
    assert_eq!(s.correlation_lag, 0);
    // Per reaction, static or dynamic target: the two blocked queues hold
    // one item each of `poisoned`.
    assert_eq!(
        s.reaction_lag,
        vec![
            ("flaky".to_string(), 0),
            ("per-stream".to_string(), 0),
            ("poisoned".to_string(), 2)
        ]
    );
    assert!(s.backfill_remaining.iter().all(|(_, n)| *n == 0));
    let seen = snapshot(&snapshotter);
    match seen.get(&(MetricKind::Gauge, m::QUEUES_BLOCKED.to_string(), None)) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 2.0),
        other => panic!("{other:?}"),
    }
    // Every name the docs list is one the module declares.
    assert!(m::ALL.iter().any(|d| d.name == m::BACKFILL_REMAINING));
    let _ = store.head().await.unwrap();
}

/// Every metric the module declares is in the production page's list.
#[test]
fn the_production_page_lists_every_metric() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/production.md"),
    )
    .unwrap();
    for d in m::ALL {
        assert!(
            page.contains(&format!("`{}", d.name)),
            "docs/production.md does not list {}",
            d.name
        );
    }
}
