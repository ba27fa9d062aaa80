//! With [`OtelPropagator`], act's stored trace contexts are the real
//! OpenTelemetry span contexts: one action and the reactions it causes are
//! one trace, each handler span the child of the span that appended its
//! event. Each test has its own subscriber (this thread's) and runs on a
//! current-thread runtime, so the broker's tasks see it.

mod common;

use std::sync::{Arc, Mutex};

use act::{Actor, BrokerOptions, EventStore, Invocation, MemoryStore, Query, Store, TraceContext};
use act_otel::{to_trace_context, OtelGuard, OtelPropagator, DEFAULT_FILTER};
use common::{attr, chain, Kept, Log, Note};
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::SimpleSpanProcessor;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// A provider that exports every span as it ends into `Kept`, and this
/// thread's subscriber with its layer (under the default filter).
fn traced() -> (Kept, OtelGuard, tracing::subscriber::DefaultGuard) {
    let kept = Kept::default();
    let otel = OtelGuard::new("test", SimpleSpanProcessor::new(kept.clone()), "memory");
    let subscriber = tracing_subscriber::registry()
        .with(otel.layer().with_filter(EnvFilter::new(DEFAULT_FILTER)));
    let default = tracing::subscriber::set_default(subscriber);
    (kept, otel, default)
}

fn propagator() -> Option<Arc<dyn act::TracePropagator>> {
    Some(Arc::new(OtelPropagator))
}

#[tokio::test]
async fn an_action_and_two_chained_reactions_are_one_trace_of_parent_and_child_spans() {
    let (kept, _otel, _default) = traced();
    let store = Arc::new(MemoryStore::new());
    let handed = Arc::new(Mutex::new(Vec::<TraceContext>::new()));
    let app = chain(
        store.clone() as Arc<dyn Store>,
        propagator(),
        handed.clone(),
    );

    app.act::<Log>("start", &Note("by a user"), &Actor::system("test"))
        .await
        .unwrap();
    let stats = app.broker(BrokerOptions::default()).settle().await.unwrap();
    assert_eq!(stats.reactions, 2);

    let action = kept.one("act.action", "stream", "start");
    let handle_a = kept.one("act.handle", "reaction", "a");
    let action_a = kept.one("act.action", "stream", "from-a");
    let handle_b = kept.one("act.handle", "reaction", "b");
    let trace = action.span_context.trace_id();
    for s in [&handle_a, &action_a, &handle_b] {
        assert_eq!(s.span_context.trace_id(), trace, "{}: one trace", s.name);
    }
    assert_eq!(
        action.parent_span_id,
        SpanId::INVALID,
        "the user's action is a root"
    );

    // Each handler span is the child of the span that appended its event:
    // the user's action for `a`; the action `a`'s handler ran for `b`. That
    // action is the child of `a`'s handler span, in this process.
    assert_eq!(handle_a.parent_span_id, action.span_context.span_id());
    assert!(
        handle_a.parent_span_is_remote,
        "restored from the event's meta"
    );
    assert_eq!(action_a.parent_span_id, handle_a.span_context.span_id());
    assert!(!action_a.parent_span_is_remote);
    assert_eq!(handle_b.parent_span_id, action_a.span_context.span_id());

    // The stored traceparents are those spans' contexts.
    let events = store.query(&Query::new()).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].meta.trace(),
        to_trace_context(&action.span_context).as_ref()
    );
    assert_eq!(
        events[1].meta.trace(),
        to_trace_context(&action_a.span_context).as_ref()
    );
    // What `b`'s handler was handed (to pass on to outgoing calls) is its
    // own span's context.
    assert_eq!(
        handed.lock().unwrap().clone(),
        vec![to_trace_context(&handle_b.span_context).unwrap()]
    );
    // act's own span fields agree.
    assert_eq!(
        attr(&handle_b, "trace_id").as_deref(),
        Some(trace.to_string().as_str())
    );
    assert_eq!(
        attr(&handle_b, "parent").as_deref(),
        Some(action_a.span_context.span_id().to_string().as_str())
    );
}

#[tokio::test]
async fn an_action_given_a_remote_traceparent_continues_that_trace() {
    let (kept, _otel, _default) = traced();
    let store = Arc::new(MemoryStore::new());
    let app = chain(
        store.clone() as Arc<dyn Store>,
        propagator(),
        Arc::default(),
    );
    let remote =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();

    let snap = app
        .execute::<Log>(
            "start",
            &Note("from a request"),
            Invocation::by(Actor::system("test")).traced(remote.clone()),
        )
        .await
        .unwrap();
    app.broker(BrokerOptions::default()).settle().await.unwrap();

    let action = kept.one("act.action", "stream", "start");
    assert_eq!(
        action.span_context.trace_id().to_string(),
        remote.trace_id()
    );
    assert_eq!(action.parent_span_id.to_string(), remote.span_id());
    assert!(action.parent_span_is_remote);
    let stored = snap.events[0].meta.trace().unwrap();
    assert_eq!(stored, &to_trace_context(&action.span_context).unwrap());
    for (name, key, value) in [
        ("act.handle", "reaction", "a"),
        ("act.action", "stream", "from-a"),
        ("act.handle", "reaction", "b"),
    ] {
        let s = kept.one(name, key, value);
        assert_eq!(s.span_context.trace_id().to_string(), remote.trace_id());
    }
}

#[tokio::test]
async fn an_action_inside_a_span_of_the_callers_is_its_child() {
    let (kept, _otel, _default) = traced();
    let store = Arc::new(MemoryStore::new());
    let app = chain(
        store.clone() as Arc<dyn Store>,
        propagator(),
        Arc::default(),
    );
    let request = tracing::info_span!("http.request");
    let request_cx = {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        request.context().span().span_context().clone()
    };
    {
        use tracing::Instrument;
        app.act::<Log>("start", &Note("in a request"), &Actor::system("test"))
            .instrument(request.clone())
            .await
            .unwrap();
    }
    drop(request);
    let action = kept.one("act.action", "stream", "start");
    assert_eq!(action.span_context.trace_id(), request_cx.trace_id());
    assert_eq!(action.parent_span_id, request_cx.span_id());
    assert!(!action.parent_span_is_remote);
    let events = store.query(&Query::new()).await.unwrap();
    assert_eq!(
        events[0].meta.trace(),
        to_trace_context(&action.span_context).as_ref()
    );
}

#[tokio::test]
async fn without_the_layer_act_derives_the_contexts_as_before() {
    // The propagator is set but no subscriber has the OpenTelemetry layer.
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
    let store = Arc::new(MemoryStore::new());
    let handed = Arc::new(Mutex::new(Vec::<TraceContext>::new()));
    let app = chain(
        store.clone() as Arc<dyn Store>,
        propagator(),
        handed.clone(),
    );
    let snap = app
        .act::<Log>("start", &Note("untraced"), &Actor::system("test"))
        .await
        .unwrap();
    app.broker(BrokerOptions::default()).settle().await.unwrap();
    let first = snap.events[0].meta.trace().unwrap().clone();
    let events = store.query(&Query::new()).await.unwrap();
    let second = events[1].meta.trace().unwrap();
    assert_eq!(second.trace_id(), first.trace_id());
    assert_ne!(second.span_id(), first.span_id());
    assert_eq!(handed.lock().unwrap()[0].trace_id(), first.trace_id());
}
