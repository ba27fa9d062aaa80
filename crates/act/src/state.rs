//! Typed states rebuilt from their streams, and actions that decide events.
//!
//! A [`State`] folds its stream's events ([`State::apply`]) and decides what an
//! action emits ([`State::decide`]), refusing with an [`Invariant`] when the
//! action would break one. [`crate::Act::act`] loads the state, decides, and
//! appends with the version it read, so two writers cannot both act on the
//! same version: one gets [`crate::Error::Concurrency`].
//!
//! Events are a serde enum tagged adjacently as `{"name": …, "data": …}`,
//! which is exactly how act stores a [`Message`]:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "name", content = "data")]
//! enum CounterEvent { Incremented { by: u32 }, Reset }
//! ```
//!
//! Snapshots: a state with [`State::SNAPSHOT_EVERY`] set stores its JSON as a
//! `__snapshot__` event in its own stream every that many events, and loads
//! from the last snapshot forward, so loading costs at most that many events.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::{Event, Message};
use crate::query::Query;
use crate::store::Store;

/// The name of snapshot events. Reserved: never register a reaction on it.
pub const SNAPSHOT: &str = "__snapshot__";

/// Why an action was refused. Becomes [`crate::Error::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invariant(pub String);

impl Invariant {
    /// An invariant violation with a message for the caller.
    pub fn new(reason: impl Into<String>) -> Self {
        Invariant(reason.into())
    }
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An action: something a caller asks a state to do.
pub trait Action: Send + Sync {
    /// The action's name, stored in the causation of the events it emits.
    fn name(&self) -> &str;
}

/// A typed state rebuilt from its stream.
pub trait State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The events of this state, a serde enum with
    /// `#[serde(tag = "name", content = "data")]`.
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// The actions this state accepts.
    type Action: Action;

    /// Store a snapshot every this many events (`None`: never).
    const SNAPSHOT_EVERY: Option<u64> = None;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Checks invariants and returns the events the action emits (none is a
    /// valid answer: the action changes nothing).
    fn decide(&self, action: &Self::Action) -> std::result::Result<Vec<Self::Event>, Invariant>;
}

/// A state as loaded (or as left by an action).
#[derive(Debug, Clone)]
pub struct Snapshot<S> {
    /// The folded state.
    pub state: S,
    /// Version of the stream's last event (`None`: empty stream).
    pub version: Option<i64>,
    /// Events (not counting snapshots) since the last snapshot.
    pub since_snapshot: u64,
    /// The events the action appended (empty after a plain load).
    pub events: Vec<Arc<Event>>,
}

/// Encodes a typed event as a stored message (`{"name","data"}` layout).
pub fn encode<E: Serialize>(event: &E) -> Result<Message> {
    if let Ok(message) = crate::tagged::encode(event) {
        return Ok(message);
    }
    let value = serde_json::to_value(event).map_err(|e| Error::decode("an event to append", e))?;
    let Value::Object(mut map) = value else {
        return Err(Error::decode(
            "an event to append",
            "expected an enum with #[serde(tag = \"name\", content = \"data\")]",
        ));
    };
    let name = match map.remove("name") {
        Some(Value::String(n)) => n,
        _ => {
            return Err(Error::decode(
                "an event to append",
                "no string `name`: use #[serde(tag = \"name\", content = \"data\")]",
            ))
        }
    };
    let data = map.remove("data").unwrap_or(Value::Null);
    Ok(Message { name, data })
}

/// Decodes a stored event into a typed event.
///
/// Presents the event as a map with `name` first and `data` borrowed, so
/// serde's adjacently tagged enums read the tag, then deserialize the payload
/// in place: no copy of the payload, no intermediate buffering.
pub fn decode<E: DeserializeOwned>(event: &Event) -> Result<E> {
    use serde::de::value::MapDeserializer;
    let name = Value::String(event.name.clone());
    let entries: [(&str, &Value); 2] = [("name", &name), ("data", &event.data)];
    let fields = entries
        .into_iter()
        .filter(|(k, v)| *k == "name" || !v.is_null());
    let de: MapDeserializer<'_, _, serde_json::Error> = MapDeserializer::new(fields);
    E::deserialize(de).map_err(|e| {
        Error::decode(
            format!(
                "event {} `{}` in stream `{}`",
                event.id, event.name, event.stream
            ),
            e,
        )
    })
}

/// Loads `S` from `stream`: from the last snapshot when the state takes them.
pub async fn load<S: State>(store: &dyn Store, stream: &str) -> Result<Snapshot<S>> {
    let mut tail: Vec<Arc<Event>> = Vec::new();
    let mut base: Option<Arc<Event>> = None;
    match S::SNAPSHOT_EVERY {
        None => tail = store.query(&Query::new().stream(stream)).await?,
        Some(every) => {
            // Read backward in pages until a snapshot or the stream's start.
            let page = usize::try_from(every)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let mut before: Option<i64> = None;
            'pages: loop {
                let mut q = Query::new().stream(stream).backward().limit(page);
                q.before = before;
                let events = store.query(&q).await?;
                let short = events.len() < page;
                for e in events {
                    if before.is_some_and(|b| e.id >= b) {
                        return Err(Error::InvalidInput(format!(
                            "the store returned event {} of `{stream}` out of order in a backward read",
                            e.id
                        )));
                    }
                    before = Some(e.id);
                    if e.name == SNAPSHOT {
                        base = Some(e);
                        break 'pages;
                    }
                    tail.push(e);
                }
                if short {
                    break;
                }
            }
            tail.reverse();
        }
    }
    let mut state = match &base {
        Some(snap) => serde_json::from_value::<S>(snap.data.clone())
            .map_err(|e| Error::decode(format!("snapshot {} of stream `{stream}`", snap.id), e))?,
        None => S::default(),
    };
    let mut version = base.as_ref().map(|s| s.version);
    let mut since = 0u64;
    for e in &tail {
        version = Some(e.version);
        if e.name == SNAPSHOT {
            continue;
        }
        state.apply(&decode::<S::Event>(e)?);
        since += 1;
    }
    Ok(Snapshot {
        state,
        version,
        since_snapshot: since,
        events: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "name", content = "data")]
    enum Ev {
        Added { n: i64 },
        Cleared,
    }

    #[test]
    fn events_round_trip_through_messages() {
        let m = encode(&Ev::Added { n: 3 }).unwrap();
        assert_eq!(m.name, "Added");
        assert_eq!(m.data, serde_json::json!({"n": 3}));
        let m2 = encode(&Ev::Cleared).unwrap();
        assert_eq!(m2.name, "Cleared");
        assert_eq!(m2.data, Value::Null);
        let stored = |m: Message| Event {
            id: 1,
            stream: "s".into(),
            version: 0,
            name: m.name,
            data: m.data,
            meta: crate::event::Meta {
                created: chrono::Utc::now(),
                correlation: "c".into(),
                causation: Default::default(),
                actor: Default::default(),
            },
        };
        assert_eq!(decode::<Ev>(&stored(m)).unwrap(), Ev::Added { n: 3 });
        assert_eq!(decode::<Ev>(&stored(m2)).unwrap(), Ev::Cleared);
    }

    #[test]
    fn an_unknown_event_name_is_a_decode_error_naming_the_event() {
        let e = Event {
            id: 7,
            stream: "s".into(),
            version: 0,
            name: "Nope".into(),
            data: Value::Null,
            meta: crate::event::Meta {
                created: chrono::Utc::now(),
                correlation: "c".into(),
                causation: Default::default(),
                actor: Default::default(),
            },
        };
        let err = decode::<Ev>(&e).unwrap_err().to_string();
        assert!(err.contains("event 7 `Nope`"), "{err}");
    }

    #[test]
    fn a_non_enum_event_cannot_be_encoded() {
        #[derive(Serialize)]
        struct Plain(u32);
        assert!(matches!(encode(&Plain(1)), Err(Error::Decode { .. })));
    }
}
