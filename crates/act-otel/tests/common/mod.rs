//! Shared fixtures of act-otel's tests: the chain of the core's trace test
//! (an action on `start`, reaction `a` acting on `from-a`, reaction `b`
//! noting the trace it was handed), and an exporter that keeps what the
//! SDK exports.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use act::{Act, Action, Invariant, Reaction, State, Store, TraceContext};
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde::{Deserialize, Serialize};

#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Log {
    n: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub enum LogEvent {
    Noted { what: String },
}

pub struct Note(pub &'static str);

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

/// The chain: `start` → reaction `a` (acts on `from-a`) → reaction `b`,
/// which pushes the trace context its handler was handed to `handed`.
/// Built with the process's default propagator unless `propagator`.
pub fn chain(
    store: Arc<dyn Store>,
    propagator: Option<Arc<dyn act::TracePropagator>>,
    handed: Arc<Mutex<Vec<TraceContext>>>,
) -> Act {
    let mut builder = Act::builder(store)
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
                    let handed = handed.clone();
                    async move {
                        handed.lock().unwrap().push(ctx.trace().clone());
                        Ok(())
                    }
                }),
        );
    if let Some(p) = propagator {
        builder = builder.trace_propagator(p);
    }
    builder.build().unwrap()
}

/// Keeps every span the SDK exports.
#[derive(Debug, Clone, Default)]
pub struct Kept(pub Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Kept {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Kept {
    /// The one exported span named `name` whose attribute `key` is `value`.
    pub fn one(&self, name: &str, key: &str, value: &str) -> SpanData {
        let spans = self.0.lock().unwrap();
        let found: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == name && attr(s, key).as_deref() == Some(value))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {name} span with {key}={value}, among {:?}",
            spans
                .iter()
                .map(|s| (s.name.to_string(), s.attributes.clone()))
                .collect::<Vec<_>>()
        );
        found[0].clone()
    }
}

/// A span's attribute as a string.
pub fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.to_string(),
            other => other.to_string(),
        })
}
