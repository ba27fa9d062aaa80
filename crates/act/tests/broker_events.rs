//! A broker tells user code what happened (lifecycle events) and how it is
//! (health), without log parsing.

use std::sync::Arc;
use std::time::Duration;

use act::{
    Act, Append, Backoff, BrokerEvent, BrokerOptions, EventStore, HandlerError, MemoryStore,
    Message, Reaction, Store,
};
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

fn drain(rx: &mut tokio::sync::broadcast::Receiver<BrokerEvent>) -> Vec<BrokerEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            Err(TryRecvError::Lagged(n)) => panic!("lagged {n}"),
        }
    }
}

#[tokio::test]
async fn a_poisoned_queue_yields_exactly_one_queue_blocked_with_its_error() {
    let store = Arc::new(MemoryStore::new());
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Ping")
                .named("poisoned")
                .to_stream("poison-q")
                .max_retries(2)
                .backoff(Backoff {
                    base: Duration::from_millis(1),
                    factor: 1.0,
                    cap: Duration::from_millis(1),
                    jitter: 0.0,
                })
                .handle(|_e, _ctx| async { Err(HandlerError::transient("the input is bad")) }),
        )
        .build()
        .unwrap();
    let first = store
        .append(Append::new("s", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap()[0]
        .id;
    store
        .append(Append::new("s", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap();
    let broker = app.broker(BrokerOptions::default());
    let mut rx = broker.events();
    let stats = broker.settle().await.unwrap();
    assert_eq!((stats.blocked, stats.retries), (1, 2));
    let events = drain(&mut rx);
    let blocked: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, BrokerEvent::QueueBlocked { .. }))
        .collect();
    assert_eq!(blocked.len(), 1, "{events:?}");
    match blocked[0] {
        BrokerEvent::QueueBlocked {
            queue,
            reaction,
            event,
            error,
        } => {
            assert_eq!(queue, "poison-q");
            assert_eq!(reaction.as_deref(), Some("poisoned"));
            assert_eq!(*event, first);
            assert!(
                error.contains("the input is bad") && error.contains("attempt 3"),
                "{error}"
            );
        }
        _ => unreachable!(),
    }
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            BrokerEvent::RetryScheduled { attempt, event, .. } => Some((*attempt, *event)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, vec![(1, first), (2, first)]);
}

#[tokio::test]
async fn health_reports_a_running_loop_that_makes_progress() {
    let store = Arc::new(MemoryStore::new());
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Ping")
                .to_stream("q")
                .handle(|_e, _ctx| async { Ok(()) }),
        )
        .build()
        .unwrap();
    let broker = app.broker(BrokerOptions::default().poll(Duration::from_millis(20)));
    assert!(!broker.health().running, "not started");
    let handle = broker.start();
    store
        .append(Append::new("s", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap();
    let mut delivered = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if handle.stats().events == 1 && !handle.health().work_due {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "{:?}", handle.health());
    let h = handle.health();
    assert!(
        h.running && h.store_ok && h.consecutive_store_failures == 0,
        "{h:?}"
    );
    assert_eq!(h.leases_held, 0);
    assert!(!h.stuck(Duration::from_secs(5)) && !h.stalled(Duration::from_secs(5)));
    assert!(h.store_reachable(3));
    // Idle, the loop still turns every poll period.
    let before = h.last_turn;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(handle.health().last_turn > before);
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.events, 1);
    assert!(!broker.health().running, "ended");
}
