//! Typed reactions: register a reaction on the events of a state's event
//! enum instead of on name strings, and get the decoded event in the
//! resolver and the handler.
//!
//! ```
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use act::{Act, MemoryStore, Reaction};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(tag = "name", content = "data")]
//! enum BankEvent {
//!     Opened { owner: String },
//!     Deposited { amount: u64 },
//!     Withdrawn { amount: u64 },
//! }
//!
//! // Two variants: a misspelled one does not compile.
//! let audit = act::on!(BankEvent { Deposited, Withdrawn })
//!     .named("audit")
//!     .to(|_event: &BankEvent, raw| Some(format!("audit-{}", raw.stream)))
//!     .handle(|event, raw, _ctx| async move {
//!         match event {
//!             BankEvent::Deposited { amount } | BankEvent::Withdrawn { amount } => {
//!                 println!("event {} moved {amount}", raw.id);
//!             }
//!             BankEvent::Opened { .. } => unreachable!("not registered"),
//!         }
//!         Ok(())
//!     });
//! assert_eq!(audit.events(), ["Deposited", "Withdrawn"]);
//!
//! // Every variant.
//! let log = Reaction::on_event::<BankEvent>()
//!     .named("log")
//!     .to_stream("log")
//!     .handle(|_event: BankEvent, _raw, _ctx| async { Ok(()) });
//! assert_eq!(log.events(), ["Opened", "Deposited", "Withdrawn"]);
//!
//! let app = Act::builder(Arc::new(MemoryStore::new())).reaction(audit).reaction(log).build();
//! assert!(app.is_ok());
//! ```
//!
//! The event names come from serde: the variants of an enum tagged
//! `#[serde(tag = "name", content = "data")]` (the layout act stores), with
//! `#[serde(rename_all = …)]` honoured. A variant renamed on its own with
//! `#[serde(rename = "…")]` is found by [`Reaction::on_event`] (all
//! variants) but not by [`on!`](crate::on), which names variants by their
//! Rust identifiers: building such a reaction fails with an error listing
//! the names serde knows.
//!
//! An event whose name matches but whose data does not decode into the type
//! (an old payload, a producer elsewhere) is never skipped: the handler's
//! decode failure is permanent, so its queue blocks with the decode error;
//! a typed resolver that cannot decode the event sends it to the reaction's
//! invalid-target queue, where it blocks with the same error.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

use crate::backoff::Backoff;
use crate::context::Context;
use crate::event::Event;
use crate::reaction::{HandlerError, Reaction, ReactionBuilder, ReactionOptions, Resolver};
use crate::subscription::Start;

/// The event names of `E`, an enum tagged `#[serde(tag = "name", content =
/// "data")]`, in declaration order, as serde writes them.
///
/// An error says why when `E` is not such an enum.
pub fn event_names<E: DeserializeOwned>() -> Result<Vec<&'static str>, String> {
    let found = Cell::new(None);
    let _ = E::deserialize(Probe { found: &found });
    match found.get() {
        Some(names) if !names.is_empty() => Ok(names.to_vec()),
        Some(_) => Err(format!(
            "`{}` has no variants to react to",
            std::any::type_name::<E>()
        )),
        None => Err(format!(
            "`{}` is not an event enum: derive Deserialize with \
             #[serde(tag = \"name\", content = \"data\")]",
            std::any::type_name::<E>()
        )),
    }
}

/// The serde name of each variant identifier in `idents`, honouring a
/// `rename_all` on the enum.
pub fn variant_names<E: DeserializeOwned>(idents: &[&str]) -> Result<Vec<String>, String> {
    let known = event_names::<E>()?;
    let mut out = Vec::with_capacity(idents.len());
    for ident in idents {
        let mut matches: Vec<String> = spellings(ident)
            .into_iter()
            .filter(|s| known.contains(&s.as_str()))
            .collect();
        matches.dedup();
        match matches.len() {
            1 => out.push(matches.remove(0)),
            _ => {
                return Err(format!(
                    "variant `{ident}` of `{}` has no event name serde knows \
                     (renamed with #[serde(rename)]? use Reaction::on(\"…\") with its name); \
                     the names are: {}",
                    std::any::type_name::<E>(),
                    known.join(", ")
                ))
            }
        }
    }
    Ok(out)
}

/// `ident` as each `rename_all` rule of serde writes it.
fn spellings(ident: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for (i, c) in ident.char_indices() {
        if i == 0 || c.is_uppercase() || words.is_empty() {
            words.push(c.to_lowercase().collect());
        } else if let Some(w) = words.last_mut() {
            w.extend(c.to_lowercase());
        }
    }
    let snake = words.join("_");
    let camel: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w.clone() } else { capitalize(w) })
        .collect();
    let mut all = vec![
        ident.to_string(),
        ident.to_lowercase(),
        ident.to_uppercase(),
        camel,
        snake.clone(),
        snake.to_uppercase(),
        words.join("-"),
        words.join("-").to_uppercase(),
    ];
    all.sort();
    all.dedup();
    all
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A deserializer that answers only what an adjacently tagged enum asks
/// first (the tag), and records the variant names serde hands over with it.
struct Probe<'a> {
    found: &'a Cell<Option<&'static [&'static str]>>,
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TagOnly {
            found: self.found,
            asked: false,
        })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct TagOnly<'a> {
    found: &'a Cell<Option<&'static [&'static str]>>,
    asked: bool,
}

impl<'de> MapAccess<'de> for TagOnly<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        if self.asked {
            return Ok(None);
        }
        self.asked = true;
        seed.deserialize(de::value::BorrowedStrDeserializer::new("name"))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(Variants { found: self.found })
    }
}

struct Variants<'a> {
    found: &'a Cell<Option<&'static [&'static str]>>,
}

impl<'de> de::Deserializer<'de> for Variants<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not an adjacently tagged enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.found.set(Some(variants));
        Err(de::Error::custom("probed"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// Registers a typed reaction on some variants of an event enum, checked at
/// compile time: `act::on!(BankEvent { Deposited, Withdrawn })`. A variant
/// that does not exist is a compile error. Returns a [`TypedReactionBuilder`].
///
/// ```
/// use serde::Deserialize;
/// #[derive(Deserialize)]
/// #[serde(tag = "name", content = "data")]
/// enum BankEvent {
///     Deposited { amount: u64 },
///     Withdrawn { amount: u64 },
/// }
/// let _ = act::on!(BankEvent { Deposited, Withdrawn })
///     .handle(|_event: BankEvent, _raw, _ctx| async { Ok(()) });
/// ```
///
/// A misspelled variant does not compile (E0599: no variant named
/// `Withdrawnn` found for enum `BankEvent`, with the compiler's suggestion
/// of `Withdrawn`):
///
/// ```compile_fail,E0599
/// use serde::Deserialize;
/// #[derive(Deserialize)]
/// #[serde(tag = "name", content = "data")]
/// enum BankEvent {
///     Deposited { amount: u64 },
///     Withdrawn { amount: u64 },
/// }
/// let _ = act::on!(BankEvent { Deposited, Withdrawnn })
///     .handle(|_event: BankEvent, _raw, _ctx| async { Ok(()) });
/// ```
#[macro_export]
macro_rules! on {
    ($ty:path { $($variant:ident),+ $(,)? }) => {{
        type ActTypedEvent = $ty;
        // Never called: it makes a misspelled variant a compile error.
        let _check = |event: &ActTypedEvent| matches!(event, $(ActTypedEvent::$variant { .. })|+);
        $crate::Reaction::on_variants::<ActTypedEvent>(&[$(stringify!($variant)),+])
    }};
}

impl Reaction {
    /// Starts a typed reaction to every variant of the event enum `E`.
    pub fn on_event<E>() -> TypedReactionBuilder<E>
    where
        E: DeserializeOwned + Send + Sync + 'static,
    {
        TypedReactionBuilder::new(
            event_names::<E>().map(|v| v.into_iter().map(String::from).collect()),
        )
    }

    /// Starts a typed reaction to the variants of `E` named by their Rust
    /// identifiers. Prefer [`on!`](crate::on), which checks the identifiers
    /// at compile time.
    pub fn on_variants<E>(variants: &[&str]) -> TypedReactionBuilder<E>
    where
        E: DeserializeOwned + Send + Sync + 'static,
    {
        TypedReactionBuilder::new(variant_names::<E>(variants))
    }
}

/// Builds a typed [`Reaction`]; finish with [`TypedReactionBuilder::handle`].
/// The same options as [`ReactionBuilder`].
#[must_use = "a reaction does nothing until `.handle(…)` builds it and it is registered"]
pub struct TypedReactionBuilder<E> {
    inner: ReactionBuilder,
    invalid: Option<String>,
    _event: PhantomData<fn() -> E>,
}

impl<E> TypedReactionBuilder<E>
where
    E: DeserializeOwned + Send + Sync + 'static,
{
    fn new(names: Result<Vec<String>, String>) -> Self {
        let (names, invalid) = match names {
            Ok(n) => (n, None),
            Err(e) => (vec![String::new()], Some(e)),
        };
        let mut names = names.into_iter();
        let mut inner = Reaction::on(names.next().unwrap_or_default());
        for n in names {
            inner = inner.also(n);
        }
        TypedReactionBuilder {
            inner,
            invalid,
            _event: PhantomData,
        }
    }

    fn map(mut self, f: impl FnOnce(ReactionBuilder) -> ReactionBuilder) -> Self {
        self.inner = f(self.inner);
        self
    }

    /// Also react to events named `event` (from elsewhere); they must decode
    /// into `E` too.
    pub fn also(self, event: impl Into<String>) -> Self {
        self.map(|b| b.also(event))
    }

    /// Names the reaction (see [`ReactionBuilder::named`]).
    pub fn named(self, name: impl Into<String>) -> Self {
        self.map(|b| b.named(name))
    }

    /// Sends every event to one queue.
    pub fn to_stream(self, stream: impl Into<String>) -> Self {
        self.map(|b| b.to_stream(stream))
    }

    /// Picks the queue per event from the decoded event and the stored one
    /// (`None` skips it). Must be pure. An event that does not decode goes to
    /// the reaction's invalid-target queue and blocks there with the error.
    pub fn to<F>(self, resolve: F) -> Self
    where
        F: Fn(&E, &Event) -> Option<String> + Send + Sync + 'static,
    {
        self.map(|b| {
            b.resolver(Resolver::Dynamic(Arc::new(move |event: &Event| {
                let typed = crate::state::decode::<E>(event).map_err(|e| e.to_string())?;
                Ok(resolve(&typed, event))
            })))
        })
    }

    /// Picks the queue per event from the stored event alone (`None` skips
    /// it), without decoding it at correlation: for routing by stream name or
    /// meta. Must be pure.
    pub fn to_raw<F>(self, resolve: F) -> Self
    where
        F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
    {
        self.map(|b| b.to(resolve))
    }

    /// Sets all options.
    pub fn options(self, options: ReactionOptions) -> Self {
        self.map(|b| b.options(options))
    }

    /// Sets the number of retries before the queue blocks.
    pub fn max_retries(self, n: u32) -> Self {
        self.map(|b| b.max_retries(n))
    }

    /// Sets the backoff.
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.map(|b| b.backoff(backoff))
    }

    /// Sets the priority of the target queues.
    pub fn priority(self, priority: i32) -> Self {
        self.map(|b| b.priority(priority))
    }

    /// Sets the handler timeout.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    /// Lets handler calls run for as long as they take.
    pub fn no_timeout(self) -> Self {
        self.map(|b| b.no_timeout())
    }

    /// Starts from the beginning of the log (see [`ReactionBuilder::from_beginning`]).
    pub fn from_beginning(self) -> Self {
        self.map(|b| b.from_beginning())
    }

    /// Starts with events committed from now on (see [`ReactionBuilder::from_now`]).
    pub fn from_now(self) -> Self {
        self.map(|b| b.from_now())
    }

    /// Starts after event `id` (see [`ReactionBuilder::from_event`]).
    pub fn from_event(self, id: i64) -> Self {
        self.map(|b| b.from_event(id))
    }

    /// Sets where the reaction starts when the store first sees it.
    pub fn start(self, start: Start) -> Self {
        self.map(|b| b.start(start))
    }

    /// Finishes the reaction with a handler that gets the decoded event, the
    /// stored event and the context. An event that does not decode into `E`
    /// fails permanently with the decode error: its queue blocks, nothing is
    /// skipped. Without a resolver, each event goes to a queue named after
    /// its own stream.
    pub fn handle<F, Fut>(self, handler: F) -> Reaction
    where
        F: Fn(E, Arc<Event>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut reaction = self.inner.handle(move |event: Arc<Event>, ctx: Context| {
            let handler = handler.clone();
            async move {
                let typed = crate::state::decode::<E>(&event).map_err(HandlerError::permanent)?;
                handler(typed, event, ctx).await
            }
        });
        reaction.set_invalid(self.invalid);
        reaction
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(tag = "name", content = "data")]
    enum Plain {
        Opened { owner: String },
        Closed,
        Moved(u64),
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(tag = "name", content = "data", rename_all = "snake_case")]
    enum Snake {
        OrderPlaced { id: u64 },
        OrderShipped,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(tag = "name", content = "data")]
    enum Renamed {
        #[serde(rename = "order.placed")]
        Placed,
        Shipped,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(tag = "name")]
    enum Internal {
        A { x: u64 },
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct NotAnEnum {
        name: String,
    }

    #[test]
    fn event_names_come_from_serde_in_declaration_order() {
        assert_eq!(
            event_names::<Plain>().unwrap(),
            ["Opened", "Closed", "Moved"]
        );
        assert_eq!(
            event_names::<Snake>().unwrap(),
            ["order_placed", "order_shipped"]
        );
        assert_eq!(
            event_names::<Renamed>().unwrap(),
            ["order.placed", "Shipped"]
        );
    }

    #[test]
    fn a_type_that_is_not_an_adjacently_tagged_enum_is_named_in_the_error() {
        for err in [
            event_names::<Internal>().unwrap_err(),
            event_names::<NotAnEnum>().unwrap_err(),
            event_names::<u64>().unwrap_err(),
        ] {
            assert!(err.contains("tag = \"name\", content = \"data\""), "{err}");
        }
    }

    #[test]
    fn variant_identifiers_map_through_rename_all() {
        assert_eq!(
            variant_names::<Snake>(&["OrderShipped"]).unwrap(),
            ["order_shipped"]
        );
        assert_eq!(
            variant_names::<Plain>(&["Moved", "Opened"]).unwrap(),
            ["Moved", "Opened"]
        );
        let err = variant_names::<Renamed>(&["Placed"]).unwrap_err();
        assert!(
            err.contains("`Placed`") && err.contains("order.placed, Shipped"),
            "{err}"
        );
    }

    #[test]
    fn a_typed_reaction_whose_names_are_unknown_is_refused_at_build() {
        let r = Reaction::on_variants::<Renamed>(&["Placed"])
            .named("r")
            .handle(|_e: Renamed, _raw, _ctx| async { Ok(()) });
        let err = crate::Act::builder(Arc::new(crate::MemoryStore::new()))
            .reaction(r)
            .build()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("reaction `r`") && err.contains("`Placed`"),
            "{err}"
        );
    }

    #[test]
    fn the_macro_names_the_variants_it_is_given() {
        let r = crate::on!(Snake { OrderPlaced }).handle(|_e, _raw, _ctx| async { Ok(()) });
        assert_eq!(r.events(), ["order_placed"]);
        assert_eq!(r.name(), "order_placed");
    }
}
