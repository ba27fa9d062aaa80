//! One action and every reaction it causes share one trace id: in the spans
//! and in the stored events. Its own binary: the subscriber is global.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use act::{
    Act, Action, Actor, BrokerOptions, EventStore, Invariant, MemoryStore, Query, Reaction, State,
    Store, TraceContext,
};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

type Spans = Arc<Mutex<HashMap<u64, (String, HashMap<String, String>)>>>;

/// Collects every span's name and fields.
struct Collect(Spans);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_string(), v.to_string());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_string(), format!("{v:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Collect {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .insert(id.into_u64(), (attrs.metadata().name().to_string(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Log {
    n: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum LogEvent {
    Noted { what: String },
}

struct Note(&'static str);
impl Action for Note {
    fn name(&self) -> &str {
        "note"
    }
}

impl State for Log {
    type Event = LogEvent;
    type Action = Note;
    fn apply(&mut self, _: &LogEvent) {
        self.n += 1;
    }
    fn decide(&self, a: &Note) -> Result<Vec<LogEvent>, Invariant> {
        Ok(vec![LogEvent::Noted {
            what: a.0.to_string(),
        }])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_and_the_reactions_it_causes_share_one_trace() {
    let spans: Spans = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Collect(spans.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let store = Arc::new(MemoryStore::new());
    let handed = Arc::new(Mutex::new(Vec::<TraceContext>::new()));
    let seen = handed.clone();
    let app = Act::builder(store.clone() as Arc<dyn Store>)
        .reaction(
            Reaction::on("Noted")
                .named("a")
                .to(|e| (e.stream == "start").then(|| "a-q".to_string()))
                .handle(|_e, ctx| async move {
                    ctx.act::<Log>("from-a", &Note("by a")).await?;
                    Ok(())
                }),
        )
        .reaction(
            Reaction::on("Noted")
                .named("b")
                .to(|e| (e.stream == "from-a").then(|| "b-q".to_string()))
                .handle(move |_e, ctx| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(ctx.trace().clone());
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap();
    let snap = app
        .act::<Log>("start", &Note("by a user"), &Actor::system("test"))
        .await
        .unwrap();
    let trace = snap.events[0]
        .meta
        .trace()
        .expect("the event carries a trace")
        .clone();
    let stats = app.broker(BrokerOptions::default()).settle().await.unwrap();
    assert_eq!(stats.reactions, 2);

    // The stored events: one trace id, the reaction's event a new span.
    let events = store.query(&Query::new()).await.unwrap();
    assert_eq!(events.len(), 2);
    let from_a = events[1]
        .meta
        .trace()
        .expect("the reaction's event carries a trace");
    assert_eq!(from_a.trace_id(), trace.trace_id());
    assert_ne!(from_a.span_id(), trace.span_id());

    // The spans: both actions and both handler calls, one trace id.
    let spans = spans.lock().unwrap();
    let of = |name: &str| -> Vec<HashMap<String, String>> {
        spans
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    };
    let actions = of("act.action");
    let handles = of("act.handle");
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(handles.len(), 2, "{handles:?}");
    for span in actions.iter().chain(&handles) {
        assert_eq!(
            span.get("trace_id").map(String::as_str),
            Some(trace.trace_id()),
            "{span:?}"
        );
    }
    // A's handler span is a child of the user's action; B's of A's action.
    let handle = |r: &str| handles.iter().find(|f| f["reaction"] == r).unwrap().clone();
    assert_eq!(handle("a")["parent"], trace.span_id());
    assert_eq!(handle("b")["parent"], from_a.span_id());
    assert_eq!(handled_span(&handed), handle("b")["span_id"]);
    assert!(of("act.batch").len() >= 2);
}

fn handled_span(handed: &Mutex<Vec<TraceContext>>) -> String {
    handed.lock().unwrap()[0].span_id().to_string()
}
