//! The exporter end to end: spans of an action and its chained reactions
//! reach a real OTLP/HTTP receiver (a hyper server on 127.0.0.1 decoding
//! `ExportTraceServiceRequest` protobufs) as one trace, flushed by the
//! guard; and a collector that is not there never stalls the broker (its
//! failed exports are logged).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use act::{Actor, BrokerOptions, MemoryStore, Store};
use act_otel::{install, Options, OtelPropagator, DEFAULT_FILTER};
use act_testservers::otlp::{Receiver, Span};
use common::{chain, Log, Note};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Waits until `cond` holds, checking every 50 ms; panics with `what` after
/// `limit` (a guard against hangs, not a timing assertion).
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn the_spans_of_a_chain_reach_an_otlp_receiver_as_one_trace() {
    let receiver = Receiver::start();
    let otel =
        install(&Options::new("otlp-test").endpoint(format!("{}/", receiver.url()))).unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(otel.layer().with_filter(EnvFilter::new(DEFAULT_FILTER)));
    let default = tracing::subscriber::set_default(subscriber);

    let store = Arc::new(MemoryStore::new());
    let app = chain(
        store as Arc<dyn Store>,
        Some(Arc::new(OtelPropagator)),
        Arc::default(),
    );
    let snap = app
        .act::<Log>("start", &Note("by a user"), &Actor::system("test"))
        .await
        .unwrap();
    let stats = app.broker(BrokerOptions::default()).settle().await.unwrap();
    assert_eq!(stats.reactions, 2);
    drop(default);
    // The batch thread sends what is queued; the receiver runs on its own
    // thread, so blocking here is fine.
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .unwrap()
        .unwrap();

    let stored = snap.events[0].meta.trace().unwrap().clone();
    let mut spans = Vec::new();
    wait_until(
        "the receiver to have both actions and both handler calls",
        Duration::from_secs(30),
        || {
            spans = receiver.spans();
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            names.iter().filter(|n| **n == "act.action").count() == 2
                && names.iter().filter(|n| **n == "act.handle").count() == 2
        },
    );
    let chained: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "act.action" || s.name == "act.handle" || s.name == "act.append")
        .collect();
    assert!(chained.len() >= 4, "{spans:?}");
    let traces: HashSet<&str> = chained.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        HashSet::from([stored.trace_id()]),
        "one trace, the one stored with the first event: {chained:?}"
    );
    assert!(spans.iter().all(|s| s.service == "otlp-test"), "{spans:?}");
    // Every handler span's parent is a span of the trace that was received.
    let ids: HashSet<&str> = chained.iter().map(|s| s.span_id.as_str()).collect();
    let handles: Vec<&&Span> = chained.iter().filter(|s| s.name == "act.handle").collect();
    assert_eq!(handles.len(), 2);
    for h in handles {
        assert!(
            ids.contains(h.parent_span_id.as_str()),
            "{h:?} has its parent"
        );
    }
    let root = chained
        .iter()
        .find(|s| s.span_id == stored.span_id())
        .expect("the span stored with the first event was received");
    assert_eq!(root.name, "act.action");
    assert_eq!(root.attr("stream"), Some("start"));
    assert!(
        root.parent_span_id.is_empty(),
        "{root:?} is the trace's root"
    );
}

#[tokio::test]
async fn a_collector_that_is_not_there_never_stalls_the_broker() {
    // A port nothing listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let logged = Logged::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Capture(logged.clone())),
    )
    .unwrap();
    let otel = install(&Options::new("nowhere").endpoint(format!("http://{addr}"))).unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(otel.layer().with_filter(EnvFilter::new(DEFAULT_FILTER)));
    let _default = tracing::subscriber::set_default(subscriber);

    let app = chain(
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Some(Arc::new(OtelPropagator)),
        Arc::default(),
    );
    // Many more spans than a batch, so exports are attempted (and fail)
    // while the broker works. A hang guard, not a timing assertion.
    let work = async {
        for _ in 0..300 {
            app.act::<Log>("start", &Note("nobody listens"), &Actor::system("test"))
                .await
                .unwrap();
        }
        app.broker(BrokerOptions::default()).settle().await.unwrap()
    };
    let stats = tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("the broker finished while every export failed");
    assert_eq!(stats.reactions, 600);

    // The SDK logs the failed exports (from its batch thread, through the
    // global subscriber).
    wait_until(
        "an error logged for a failed export",
        Duration::from_secs(60),
        || {
            logged.lock().unwrap().iter().any(|(level, target)| {
                *level == tracing::Level::ERROR && target.starts_with("opentelemetry")
            })
        },
    );
    // Shutting down is bounded by its timeout, whatever it reports.
    let started = Instant::now();
    let _ = tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .unwrap();
    assert!(
        started.elapsed() < act_otel::SHUTDOWN_TIMEOUT + Duration::from_secs(30),
        "shutdown is bounded"
    );
}

type Logged = Arc<Mutex<Vec<(tracing::Level, String)>>>;

/// Keeps the level and target of every event.
struct Capture(Logged);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_string()));
    }
}
