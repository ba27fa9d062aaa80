//! Kit tests of batch handlers: one call per claimed window, and failures
//! that land on the exact event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::support::{app, broker_options, fixed_backoff, ping, queue};
use super::Backend;
use crate::event::{Append, Message};
use crate::reaction::{HandlerError, Reaction, ReactionBuilder};
use crate::store::Store;

type Calls = Arc<Mutex<Vec<Vec<i64>>>>;

/// A batch reaction that records each call's event ids and fails a call
/// holding an event whose data has `"poison": true`.
fn recorder(builder: ReactionBuilder, calls: &Calls) -> Reaction {
    let calls = calls.clone();
    builder.handle_batch(move |events, _ctx| {
        let calls = calls.clone();
        async move {
            calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(events.iter().map(|e| e.id).collect());
            if let Some(bad) = events.iter().find(|e| e.data.get("poison").is_some()) {
                return Err(HandlerError::transient(format!(
                    "event {} is poison",
                    bad.id
                )));
            }
            Ok(())
        }
    })
}

async fn append_n(s: &dyn Store, n: usize) -> Vec<i64> {
    let messages = (0..n)
        .map(|i| Message::new("Ping", json!({ "i": i })))
        .collect();
    s.append(Append::new("a", messages))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect()
}

/// A batch handler gets the queue's claimed window, in id order, in one
/// call; every event is acknowledged.
pub async fn a_batch_handler_takes_the_claimed_window_in_one_call(b: &impl Backend) {
    let f = b.open().await;
    let calls = Calls::default();
    let app = app(
        f.store.clone(),
        vec![recorder(Reaction::on("Ping").to_stream("q"), &calls)],
    );
    let ids = append_n(&*f.store, 10).await;
    let stats = app
        .broker(broker_options("A").batch(100))
        .run_once()
        .await
        .unwrap();
    assert_eq!(calls.lock().unwrap().clone(), vec![ids.clone()]);
    assert_eq!((stats.events, stats.reactions), (10, 10));
    let q = queue(&*f.store, "q").await;
    assert_eq!((q.position, q.lag), (ids[9], 0));
}

/// When a batch call fails, the broker calls the handler one event at a
/// time from the start of the window: the prefix before the failing event
/// is acknowledged, the retries and the block land on that event, and
/// nothing after it is delivered.
pub async fn a_failing_event_inside_a_batch_blocks_and_the_prefix_is_acked(b: &impl Backend) {
    let f = b.open().await;
    let calls = Calls::default();
    let app = app(
        f.store.clone(),
        vec![recorder(
            Reaction::on("Ping")
                .to_stream("q")
                .max_retries(1)
                .backoff(fixed_backoff(Duration::from_secs(1))),
            &calls,
        )],
    );
    let e1 = ping(&*f.store, "a", json!({})).await.id;
    let e2 = ping(&*f.store, "a", json!({})).await.id;
    let e3 = ping(&*f.store, "a", json!({"poison": true})).await.id;
    let e4 = ping(&*f.store, "a", json!({})).await.id;
    let e5 = ping(&*f.store, "a", json!({})).await.id;
    let broker = app.broker(broker_options("A").batch(100));
    broker.run_once().await.unwrap();
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![vec![e1, e2, e3, e4, e5], vec![e1], vec![e2], vec![e3]],
        "one batch call, then one event at a time up to the failing one"
    );
    let q = queue(&*f.store, "q").await;
    assert_eq!(
        (q.position, q.next, q.retries, q.blocked),
        (e2, Some(e3), 1, false),
        "{q:?}"
    );
    f.clock.advance(Duration::from_secs(5)).await;
    broker.run_once().await.unwrap();
    let q = queue(&*f.store, "q").await;
    assert_eq!(
        (q.position, q.next, q.blocked),
        (e2, Some(e3), true),
        "{q:?}"
    );
    let error = q.error.unwrap_or_default();
    assert!(error.contains(&format!("event {e3} is poison")), "{error}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.last(),
        Some(&vec![e3]),
        "a retrying queue goes one event at a time: {calls:?}"
    );
    assert!(
        !calls[1..].iter().flatten().any(|&e| e == e4 || e == e5),
        "events after the failing one were delivered: {calls:?}"
    );
}

/// A window holds only events whose work is for the batch reaction alone:
/// an event that another reaction of the same queue also handles is run
/// per event, in order, and the window starts again after it.
pub async fn a_batch_window_stops_at_an_event_another_reaction_shares(b: &impl Backend) {
    let f = b.open().await;
    let calls = Calls::default();
    let others = Arc::new(Mutex::new(Vec::<i64>::new()));
    let other = {
        let others = others.clone();
        Reaction::on("Pong")
            .named("other")
            .to_stream("q")
            .handle(move |e, _ctx| {
                let others = others.clone();
                async move {
                    others.lock().unwrap_or_else(|p| p.into_inner()).push(e.id);
                    Ok(())
                }
            })
    };
    let batch = recorder(
        Reaction::on("Ping")
            .also("Pong")
            .named("batch")
            .to_stream("q"),
        &calls,
    );
    let app = app(f.store.clone(), vec![batch, other]);
    let mut ids = append_n(&*f.store, 2).await;
    let pong = f
        .store
        .append(Append::new("a", vec![Message::new("Pong", json!({}))]))
        .await
        .unwrap();
    ids.push(pong[0].id);
    ids.extend(append_n(&*f.store, 2).await);
    app.broker(broker_options("A").batch(100))
        .run_once()
        .await
        .unwrap();
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![vec![ids[0], ids[1]], vec![ids[2]], vec![ids[3], ids[4]]]
    );
    assert_eq!(others.lock().unwrap().clone(), vec![ids[2]]);
    assert_eq!(queue(&*f.store, "q").await.position, ids[4]);
}
