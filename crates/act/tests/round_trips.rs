//! A broker writes back its finished batches and claims the next ones in
//! one store call (`QueueStore::settle_and_claim`: one round trip on
//! PostgreSQL and Redis) whenever it has nothing else to do between the
//! two, and delivers in the same order as with two calls.
//!
//! The clock is tokio's, paused: no poll, renewal or heartbeat comes due
//! while the broker works, whatever the machine is doing, so every
//! write-back after the log is correlated has nothing beside it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use act::{Act, BrokerOptions, Reaction, Store};
use common::Watched;

const STREAMS: usize = 5;
const PER_STREAM: usize = 100;
const BATCH: usize = 10;

#[tokio::test(start_paused = true)]
async fn a_broker_writes_back_and_claims_in_one_call_once_the_log_is_correlated() {
    let watched = Arc::new(Watched::default());
    let store: Arc<dyn Store> = watched.clone();
    common::backlog(&*store, STREAMS, PER_STREAM).await;
    let seen: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let log = seen.clone();
    let app = Act::builder(store)
        .reaction(Reaction::on("Ping").named("r").handle(move |e, _| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((e.stream.clone(), e.id));
                Ok(())
            }
        }))
        .build()
        .unwrap();
    let stats = app
        .broker(BrokerOptions {
            concurrency: 1,
            batch: BATCH,
            lease: Duration::from_secs(300),
            ..BrokerOptions::default().owner("A")
        })
        .settle()
        .await
        .unwrap();
    let batches = (STREAMS * PER_STREAM / BATCH) as u64;
    assert_eq!(stats.events, (STREAMS * PER_STREAM) as u64);
    assert_eq!(
        watched.settles_with_claims.load(Ordering::SeqCst),
        batches,
        "every write-back went with the next claim"
    );
    assert_eq!(
        watched.settles.load(Ordering::SeqCst),
        0,
        "no write-back needed a call of its own"
    );
    // In order per queue, and one queue at a time, oldest pending first:
    // each stream's events in turn.
    let seen = seen.lock().unwrap().clone();
    let mut sorted = seen.clone();
    sorted.sort_by_key(|(_, id)| *id);
    assert_eq!(seen, sorted, "delivered out of claim order");
}
