//! Micro-benchmarks of the core crate's hot paths, all on [`MemoryStore`]:
//! what every event costs on its way through act, without a database in the
//! way.
//!
//! - `append`: one event per append to round-robin streams, and ten in one;
//! - `correlate`: enqueueing a correlation step's work;
//! - `claim_fetch_ack`: a broker's claim of queues with pending events and
//!   the settle call that acknowledges them;
//! - `backoff`: the retry delays of one failing event;
//! - `json`: encoding and decoding an [`Event`] with full meta.
//!
//! Every group reports elements per second (events, work items, delays). Only
//! the store call is timed: building its input and refilling or draining the
//! store happen outside the measurement. Stores that grow with every
//! iteration are replaced every [`CHUNK`] iterations, so memory stays bounded
//! however long criterion runs.
//!
//! Run with `cargo bench -p act --bench hot_paths`; the whole file takes about
//! a minute on two cores.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use act::{
    ActionRef, Actor, Append, Backoff, Causation, Claim, Correlation, Event, EventRef, EventStore,
    ExpectedVersion, MemoryStore, Message, QueueStore, Settlement, Subscription, Work,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use tokio::runtime::Runtime;

/// Iterations against one store before it is replaced by a fresh one.
const CHUNK: u64 = 10_000;

/// Streams the append benchmark cycles through.
const STREAMS: usize = 100;

/// A runtime like the broker's, on one thread so timings are not spread over
/// the other core.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a future that never waits. Every [`MemoryStore`] call completes on
/// its first poll (one mutex, no I/O), which lets a criterion setup closure,
/// itself running inside the runtime, prepare the store without `.await`.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a MemoryStore call waited"),
    }
}

/// The payload of a typical domain event: a few small fields.
fn deposit(n: usize) -> Message {
    Message::new(
        "Deposited",
        json!({ "amount": 100 + n % 900, "currency": "EUR", "reference": format!("invoice-{n}") }),
    )
}

/// An append the way `Act::act` builds one: caused by an action, by a user.
fn append_of(stream: &str, messages: Vec<Message>) -> Append {
    Append::new(stream, messages)
        .caused_by(Causation {
            action: Some(ActionRef {
                name: "deposit".into(),
                stream: stream.into(),
            }),
            event: None,
            trace: Some(act::trace::TraceContext::root()),
        })
        .by(Actor {
            id: "user-7".into(),
            name: "Ada Lovelace".into(),
        })
}

/// EventStore::append: one event per call, and ten events in one call.
fn append(c: &mut Criterion) {
    let rt = runtime();
    let streams: Vec<String> = (0..STREAMS).map(|i| format!("account-{i}")).collect();
    let mut group = c.benchmark_group("append");
    for per_append in [1usize, 10] {
        group.throughput(Throughput::Elements(per_append as u64));
        let name = if per_append == 1 { "one" } else { "batch_10" };
        group.bench_function(name, |b| {
            let streams = &streams;
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut timed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = CHUNK.min(iters - done);
                    let store = MemoryStore::new();
                    let appends: Vec<Append> = (0..n as usize)
                        .map(|i| {
                            let messages = (0..per_append).map(|k| deposit(i + k)).collect();
                            append_of(&streams[i % STREAMS], messages)
                        })
                        .collect();
                    let start = Instant::now();
                    for a in appends {
                        black_box(store.append(a).await.unwrap());
                    }
                    timed += start.elapsed();
                    done += n;
                }
                timed
            });
        });
    }
    group.finish();
}

/// The reaction the queue benchmarks enqueue work for.
const REACTION: &str = "bench";

fn subscribe(store: &MemoryStore) {
    ready(store.subscribe(&[Subscription {
        name: REACTION.into(),
        events: vec!["Deposited".into()],
        target: None,
        start: 0,
    }]))
    .unwrap();
}

/// A correlation step of [`REACTION`] that does not move its checkpoint
/// (`at` to `at`): it (re-)enqueues `work`, which a store accepts for events
/// already in the log.
fn step_at(at: i64, work: Vec<Work>) -> Correlation {
    Correlation {
        reactions: vec![REACTION.into()],
        replay: None,
        from: at,
        to: at,
        work,
    }
}

/// Work for events `1..=events`, each resolved to one of `targets` queues,
/// as the broker builds it.
fn work_for(events: i64, targets: &[String]) -> Vec<Work> {
    (1..=events)
        .map(|k| Work {
            stream: targets[(k as usize) % targets.len()].clone(),
            event: k,
            reaction: REACTION.into(),
            priority: 0,
        })
        .collect()
}

/// Claims every queue and acknowledges everything: queues caught up.
async fn drain(store: &MemoryStore, claim: &Claim) {
    loop {
        let batches = store.claim(claim).await.unwrap();
        if batches.is_empty() {
            return;
        }
        let acks: Vec<Settlement> = batches
            .iter()
            .map(|b| Settlement::ack(&b.lease, b.events[b.events.len() - 1].event.id))
            .collect();
        store.settle(&acks).await.unwrap();
    }
}

fn bench_claim(queues: usize, events: usize) -> Claim {
    Claim {
        owner: "bench-broker".into(),
        queues,
        events,
        lease: Duration::from_secs(30),
        reactions: vec![REACTION.into()],
    }
}

/// QueueStore::enqueue of 100 work items over 10 target queues that had
/// caught up (the steady state of a broker that keeps up): each queue gets
/// new pending work. Between iterations (untimed) a broker drains them.
fn correlate(c: &mut Criterion) {
    const EVENTS: i64 = 100;
    let rt = runtime();
    let targets: Vec<String> = (0..10).map(|i| format!("statement-{i}")).collect();
    let store = MemoryStore::new();
    for i in 0..EVENTS as usize {
        ready(store.append(append_of(
            &format!("account-{}", i % STREAMS),
            vec![deposit(i)],
        )))
        .unwrap();
    }
    subscribe(&store);
    let claim = bench_claim(100, 1000);
    let mut group = c.benchmark_group("correlate");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("100_work_10_queues", |b| {
        let (store, claim, targets) = (&store, &claim, &targets);
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let step = step_at(0, work_for(EVENTS, targets));
                let start = Instant::now();
                black_box(store.enqueue(&step).await.unwrap());
                timed += start.elapsed();
                drain(store, claim).await;
            }
            timed
        });
    });
    group.finish();
}

/// A store with `queues` queues (`q-0`, `q-1`, …) holding `pending` enqueued
/// events each, all claimable; returns the store and the work that fills it.
fn store_with_queues(queues: usize, pending: usize) -> (MemoryStore, Vec<Work>) {
    let store = MemoryStore::new();
    subscribe(&store);
    let names: Vec<String> = (0..queues).map(|i| format!("q-{i}")).collect();
    let mut work = Vec::with_capacity(queues * pending);
    for k in 0..queues * pending {
        let events = ready(store.append(append_of(
            &format!("account-{}", k % STREAMS),
            vec![deposit(k)],
        )))
        .unwrap();
        work.push(Work {
            stream: names[k % queues].clone(),
            event: events[0].id,
            reaction: REACTION.into(),
            priority: 0,
        });
    }
    ready(store.enqueue(&step_at(0, work.clone()))).unwrap();
    (store, work)
}

/// One broker turn: claim up to 32 queues (the default concurrency) with
/// batches of up to 100 events, then acknowledge every batch in one settle
/// call. Setup enqueues the same work again before each iteration, so every
/// iteration finds the same pending work; only claim and settle are timed.
fn claim_fetch_ack(c: &mut Criterion) {
    const CONCURRENCY: usize = 32;
    let rt = runtime();
    let claim = bench_claim(CONCURRENCY, 100);
    let mut group = c.benchmark_group("claim_fetch_ack");
    // (name, pending events per queue, queues leased by another broker first
    // in claim order)
    let cases = [
        ("32_queues_x_100_events", 100, 0),
        ("32_queues_x_1_event", 1, 0),
        ("32_queues_x_100_events_behind_1000_leased", 100, 1000),
    ];
    for (name, pending, leased) in cases {
        let (store, work) = store_with_queues(CONCURRENCY, pending);
        if leased > 0 {
            // Queues another broker holds, with a higher priority than ours
            // so they come first in claim order: every claim walks past them.
            let mut busy = Vec::new();
            for i in 0..leased {
                let events = ready(store.append(append_of("elsewhere", vec![deposit(i)]))).unwrap();
                busy.push(Work {
                    stream: format!("busy-{i}"),
                    event: events[0].id,
                    reaction: REACTION.into(),
                    priority: 1,
                });
            }
            ready(store.enqueue(&step_at(0, busy))).unwrap();
            let taken = ready(store.claim(&Claim {
                owner: "other-broker".into(),
                lease: Duration::from_secs(3600),
                ..bench_claim(leased, 100)
            }))
            .unwrap();
            assert_eq!(taken.len(), leased);
        }
        // Sanity check: one turn claims every queue with all its events.
        let batches = ready(store.claim(&claim)).unwrap();
        assert_eq!(batches.len(), CONCURRENCY);
        assert!(batches.iter().all(|b| b.events.len() == pending));
        let refs: Vec<_> = batches.iter().map(|b| b.lease.reference()).collect();
        ready(store.release(&refs)).unwrap();
        let events = (CONCURRENCY * pending) as u64;
        group.throughput(Throughput::Elements(events));
        group.bench_function(name, |b| {
            let (store, claim, work) = (&store, &claim, &work);
            b.to_async(&rt).iter_batched(
                || {
                    ready(store.enqueue(&step_at(0, work.clone()))).unwrap();
                },
                |()| async move {
                    let batches = store.claim(claim).await.unwrap();
                    let acks: Vec<Settlement> = batches
                        .iter()
                        .map(|b| Settlement::ack(&b.lease, b.events[b.events.len() - 1].event.id))
                        .collect();
                    store.settle(&acks).await.unwrap()
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Backoff::delay for retries 1 to 10 with the default settings.
fn backoff(c: &mut Criterion) {
    let backoff = Backoff::default();
    let mut group = c.benchmark_group("backoff");
    group.throughput(Throughput::Elements(10));
    group.bench_function("delay_1_to_10", |b| {
        b.iter(|| {
            for n in 1..=10 {
                black_box(black_box(&backoff).delay(black_box(n)));
            }
        });
    });
    group.finish();
}

/// A committed event as a reaction writes it: caused by an action and by the
/// event it reacted to, carrying its chain's correlation id.
fn realistic_event() -> Arc<Event> {
    let store = MemoryStore::new();
    let append = append_of("account-42", vec![deposit(42)])
        .expect(ExpectedVersion::NoStream)
        .correlate(act::new_correlation_id())
        .caused_by(Causation {
            action: Some(ActionRef {
                name: "deposit".into(),
                stream: "account-42".into(),
            }),
            event: Some(EventRef {
                id: 4710,
                name: "TransferRequested".into(),
                stream: "transfer-9".into(),
            }),
            trace: Some(act::trace::TraceContext::root()),
        });
    ready(store.append(append)).unwrap().remove(0)
}

/// serde_json encoding and decoding of one event with full meta.
fn json(c: &mut Criterion) {
    let event = realistic_event();
    let text = serde_json::to_string(&*event).unwrap();
    let decoded: Event = serde_json::from_str(&text).unwrap();
    assert_eq!(decoded, *event);
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Elements(1));
    group.bench_function("to_string", |b| {
        b.iter(|| serde_json::to_string(black_box(&*event)).unwrap());
    });
    group.bench_function("to_vec", |b| {
        b.iter(|| serde_json::to_vec(black_box(&*event)).unwrap());
    });
    group.bench_function("from_str", |b| {
        b.iter(|| serde_json::from_str::<Event>(black_box(&text)).unwrap());
    });
    group.finish();
}

/// Short runs: enough samples for stable numbers on a shared two-core machine.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = append, correlate, claim_fetch_ack, backoff, json
}
criterion_main!(hot_paths);
