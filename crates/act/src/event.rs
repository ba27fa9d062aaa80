//! The event model: what is stored, what an append asks for.
//!
//! An [`Event`] is immutable once committed. Its `id` is the global position
//! (unique, increasing, and never visible after a higher id was visible to the
//! same reader), its `version` the position within its stream (0, 1, 2…).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::trace::TraceContext;

/// A committed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Global position, unique and increasing across all streams (starts at 1).
    pub id: i64,
    /// The stream the event belongs to.
    pub stream: String,
    /// Position within the stream, starting at 0.
    pub version: i64,
    /// The event's name, e.g. `Deposited`; reactions are registered by name.
    pub name: String,
    /// The payload, any JSON value.
    pub data: Value,
    /// Who, when and why.
    pub meta: Meta,
}

/// The key of the data of an event a store could not decode (see
/// [`Event::undecodable`]).
pub const UNDECODABLE: &str = "act.undecodable";

impl Event {
    /// An event a store holds but cannot decode: its data or meta cannot be
    /// read back (written before today's limits, or damaged). Stores return
    /// it instead of failing the whole read, with `data` set to
    /// `{"act.undecodable": {"error": …, "raw": …}}` (the first 1 KiB of the
    /// stored text); the broker blocks every queue it reaches with the
    /// decode error ([`Event::undecodable_error`]), and `act events` shows it
    /// as it is. Everything else in the log goes on.
    #[allow(clippy::too_many_arguments)]
    pub fn undecodable(
        id: i64,
        stream: String,
        version: i64,
        name: String,
        created: DateTime<Utc>,
        correlation: String,
        error: impl std::fmt::Display,
        raw: &str,
    ) -> Event {
        let mut end = raw.len().min(1024);
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        Event {
            id,
            stream,
            version,
            name,
            data: serde_json::json!({ UNDECODABLE: { "error": error.to_string(), "raw": &raw[..end] } }),
            meta: Meta {
                created,
                correlation,
                causation: Causation::default(),
                actor: Actor::default(),
            },
        }
    }

    /// Why the store could not decode this event, when it could not.
    pub fn undecodable_error(&self) -> Option<&str> {
        let Value::Object(map) = &self.data else {
            return None;
        };
        if map.len() != 1 {
            return None;
        }
        map.get(UNDECODABLE)?.get("error")?.as_str()
    }

    /// A reference to this event, for a causation chain.
    pub fn reference(&self) -> EventRef {
        EventRef {
            id: self.id,
            name: self.name.clone(),
            stream: self.stream.clone(),
        }
    }
}

/// Metadata stored with every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Commit time on the store's clock (UTC).
    pub created: DateTime<Utc>,
    /// Carried unchanged through a chain of reactions; a new id for a chain
    /// started by an application action.
    pub correlation: String,
    /// The action or event that caused this event.
    #[serde(default)]
    pub causation: Causation,
    /// Who asked for it.
    #[serde(default)]
    pub actor: Actor,
}

impl Meta {
    /// The trace context the event was appended in, if any
    /// ([`Causation::trace`]).
    pub fn trace(&self) -> Option<&TraceContext> {
        self.causation.trace.as_ref()
    }
}

/// What caused an event: an application's action, a reaction to an event, or
/// both (a reaction that ran an action).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Causation {
    /// The action that emitted the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionRef>,
    /// The event whose reaction emitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventRef>,
    /// The W3C trace context of the action that appended the event (see
    /// [`crate::trace`]): a handler of the event continues its trace. Stored
    /// with the causation; events stored before have none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::trace::lenient"
    )]
    pub trace: Option<TraceContext>,
}

/// Names an action: what it was and which stream it targeted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRef {
    /// The action's name, e.g. `deposit`.
    pub name: String,
    /// The stream it targeted.
    pub stream: String,
}

/// Names an event without its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    /// Global id.
    pub id: i64,
    /// Event name.
    pub name: String,
    /// Stream.
    pub stream: String,
}

/// Who performed an action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// A stable id (user id, service name).
    pub id: String,
    /// A display name.
    pub name: String,
}

impl Actor {
    /// An actor with the same id and name, e.g. a service.
    pub fn system(name: impl Into<String>) -> Self {
        let name = name.into();
        Actor {
            id: name.clone(),
            name,
        }
    }
}

/// An event to append: a name and a JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The event's name.
    pub name: String,
    /// The payload.
    pub data: Value,
}

impl Message {
    /// Builds a message.
    pub fn new(name: impl Into<String>, data: Value) -> Self {
        Message {
            name: name.into(),
            data,
        }
    }
}

/// What an append expects of its stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds (no concurrency check).
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(i64),
}

impl ExpectedVersion {
    /// The expectation for a state loaded at `version` (`None`: empty stream).
    pub fn after(version: Option<i64>) -> Self {
        match version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        }
    }

    /// True when a stream whose last version is `actual` satisfies this.
    pub fn matches(&self, actual: Option<i64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exact(v) => actual == Some(*v),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("none (an empty stream)"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// One atomic append: all messages are committed, in order, or none.
#[derive(Debug, Clone)]
pub struct Append {
    /// The stream to append to.
    pub stream: String,
    /// The events, in order. May be empty (a no-op that still checks the version).
    pub messages: Vec<Message>,
    /// The version the writer read.
    pub expected: ExpectedVersion,
    /// Correlation id to store; a new one is generated when `None`.
    pub correlation: Option<String>,
    /// What caused the append.
    pub causation: Causation,
    /// Who asked for it.
    pub actor: Actor,
    /// When set, a second append with the same key appends nothing and returns
    /// the events of the first one (whatever its stream or messages).
    pub idempotency_key: Option<String>,
}

impl Append {
    /// An append of `messages` to `stream` with no concurrency check.
    pub fn new(stream: impl Into<String>, messages: Vec<Message>) -> Self {
        Append {
            stream: stream.into(),
            messages,
            expected: ExpectedVersion::Any,
            correlation: None,
            causation: Causation::default(),
            actor: Actor::default(),
            idempotency_key: None,
        }
    }

    /// Sets the expected version.
    pub fn expect(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotent(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the actor.
    pub fn by(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// Sets the correlation id.
    pub fn correlate(mut self, correlation: impl Into<String>) -> Self {
        self.correlation = Some(correlation.into());
        self
    }

    /// Sets the causation.
    pub fn caused_by(mut self, causation: Causation) -> Self {
        self.causation = causation;
        self
    }

    /// Sets the trace context the events carry ([`Causation::trace`]).
    pub fn traced(mut self, trace: TraceContext) -> Self {
        self.causation.trace = Some(trace);
        self
    }

    /// The correlation to store: the given one or a fresh random id.
    pub fn correlation_or_new(&self) -> String {
        self.correlation.clone().unwrap_or_else(new_correlation_id)
    }
}

/// A fresh random correlation id (128 bits, hex).
pub fn new_correlation_id() -> String {
    crate::trace::hex_string(fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_matches() {
        assert!(ExpectedVersion::Any.matches(None));
        assert!(ExpectedVersion::Any.matches(Some(4)));
        assert!(ExpectedVersion::NoStream.matches(None));
        assert!(!ExpectedVersion::NoStream.matches(Some(0)));
        assert!(ExpectedVersion::Exact(2).matches(Some(2)));
        assert!(!ExpectedVersion::Exact(2).matches(Some(3)));
        assert!(!ExpectedVersion::Exact(0).matches(None));
    }

    #[test]
    fn correlation_ids_are_distinct() {
        assert_ne!(new_correlation_id(), new_correlation_id());
        assert_eq!(new_correlation_id().len(), 32);
    }
}
