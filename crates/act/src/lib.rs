//! # act
//!
//! Event sourcing with an event-driven queue store and broker.
//!
//! Applications append events to streams through typed [`State`]s and their
//! actions. [`Reaction`]s registered on event types ([`on!`], typed) or names
//! route each event to a target stream, its *queue*. A [`Broker`] delivers every queue's events to
//! their handlers in order, retries failures with exponential backoff stored
//! in the queue, blocks a poisoned queue until an operator unblocks it, and
//! shares the work with any number of other brokers through leases with
//! fencing tokens.
//!
//! The same code runs on every backend: [`MemoryStore`] here, SQLite,
//! PostgreSQL and Redis in their own crates. Each backend passes the
//! conformance kit (`act::tck`, feature `tck`), which checks every promise of
//! the design contract.
//!
//! Observability without log parsing: brokers emit metrics through the
//! `metrics` facade ([`metrics`]: names, types, labels and
//! [`metrics::sample`] for store-wide gauges), run actions and handler calls
//! in `tracing` spans that share one W3C trace id per request, stored with
//! every event ([`trace`]), broadcast lifecycle events
//! ([`Broker::events`]) and report their [`Health`] for probes.
//!
//! ```
//! use std::sync::Arc;
//! use act::{Act, Action, Actor, BrokerOptions, Invariant, MemoryStore, State};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Clone, Serialize, Deserialize)]
//! struct Counter { value: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "name", content = "data")]
//! enum CounterEvent { Incremented { by: i64 } }
//!
//! enum CounterAction { Increment { by: i64 } }
//! impl Action for CounterAction {
//!     fn name(&self) -> &str { "increment" }
//! }
//!
//! impl State for Counter {
//!     type Event = CounterEvent;
//!     type Action = CounterAction;
//!     fn apply(&mut self, e: &CounterEvent) {
//!         match e { CounterEvent::Incremented { by } => self.value += by }
//!     }
//!     fn decide(&self, a: &CounterAction) -> Result<Vec<CounterEvent>, Invariant> {
//!         match a {
//!             CounterAction::Increment { by } if *by <= 0 => Err(Invariant::new("increment must be positive")),
//!             CounterAction::Increment { by } => Ok(vec![CounterEvent::Incremented { by: *by }]),
//!         }
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> act::Result<()> {
//! let app = Act::builder(Arc::new(MemoryStore::new()))
//!     .reaction(
//!         act::on!(CounterEvent { Incremented })
//!             .named("log")
//!             .to_stream("log")
//!             .from_beginning()
//!             .handle(|event, raw, _ctx| async move {
//!                 let CounterEvent::Incremented { by } = event;
//!                 println!("event {} moved the counter by {by}", raw.id);
//!                 Ok(())
//!             }),
//!     )
//!     .build()?;
//! let after = app.act::<Counter>("counter-1", &CounterAction::Increment { by: 2 }, &Actor::system("docs")).await?;
//! assert_eq!(after.state.value, 2);
//! let stats = app.broker(BrokerOptions::default()).settle().await?;
//! assert_eq!(stats.reactions, 1);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod app;
pub mod backoff;
pub mod broker;
mod cache;
pub mod clock;

mod context;
mod error;
mod event;
pub mod limits;
pub mod memory;
pub mod metrics;
mod query;
pub mod queue;
mod reaction;
pub mod state;
mod store;
pub mod subscription;
mod tagged;
#[cfg(feature = "tck")]
pub mod tck;
pub mod timer;
pub mod trace;
pub mod typed;

pub use app::{domain_events, Act, ActBuilder, Invocation, Registry};
pub use backoff::Backoff;
pub use broker::{Broker, BrokerEvent, BrokerHandle, BrokerOptions, Health, Stats};
pub use context::Context;
pub use error::{redact_url, ActualVersion, BoxError, Error, Result};
pub use event::{
    new_correlation_id, ActionRef, Actor, Append, Causation, Event, EventRef, ExpectedVersion,
    Message, Meta, UNDECODABLE,
};
pub use memory::MemoryStore;
pub use query::{Query, StreamFilter};
pub use queue::{
    Batch, Claim, Fenced, Lease, LeaseRef, Outcome, Pending, QueueFilter, QueueState, Rejection,
    SettledAndClaimed, Settlement, Work,
};
pub use reaction::{
    Deferral, Exhausted, Handler, HandlerError, HandlerFuture, Reaction, ReactionBuilder,
    ReactionOptions, Resolver, DEFAULT_TIMEOUT,
};
pub use state::{Action, Invariant, Snapshot, State};
pub use store::{EventStore, OpenMode, QueueStore, Store, Wake};
pub use subscription::{
    Correlation, Enqueued, Replay, Retired, Start, Subscription, SubscriptionState,
};
pub use trace::{TraceContext, TracePropagator};
pub use typed::TypedReactionBuilder;

/// The README's code runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
