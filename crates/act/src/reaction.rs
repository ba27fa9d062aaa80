//! Reactions: for one or more event names, a resolver that picks the target
//! stream (the queue) and a handler the broker calls for each event in that
//! queue, in order.
//!
//! ```
//! use act::{Reaction, Resolver};
//! let audit = Reaction::on("Deposited")
//!     .also("Withdrawn")
//!     .named("audit")
//!     .to(|e| e.stream.strip_prefix("account-").map(|n| format!("audit-{n}")))
//!     .handle(|event, ctx| async move {
//!         // ctx.act::<Audit>(ctx.stream(), …) appends idempotently
//!         Ok(())
//!     });
//! assert_eq!(audit.name(), "audit");
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::context::Context;
use crate::error::BoxError;
use crate::event::Event;
use crate::subscription::Start;

/// How long a handler call may run before the broker cancels it and counts
/// a failure (see [`ReactionOptions::timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The future a handler returns.
pub type HandlerFuture = BoxFuture<'static, Result<(), HandlerError>>;

/// A type-erased handler.
pub type Handler = Arc<dyn Fn(Arc<Event>, Context) -> HandlerFuture + Send + Sync>;

/// A type-erased batch handler ([`ReactionBuilder::handle_batch`]).
pub type BatchHandler = Arc<dyn Fn(Vec<Arc<Event>>, Context) -> HandlerFuture + Send + Sync>;

/// A dynamic resolver function: the target stream (`None` skips the event),
/// or why the event cannot be routed (a typed resolver whose event does not
/// decode), which sends it to the reaction's invalid-target queue.
pub type ResolveFn = dyn Fn(&Event) -> std::result::Result<Option<String>, String> + Send + Sync;

/// Maps an event to the stream (queue) that reacts to it.
#[derive(Clone)]
pub enum Resolver {
    /// Every event goes to this one queue.
    Static(String),
    /// A pure function of the event: `None` skips the event. It runs at
    /// correlation; the work it produces names the reaction, so delivery
    /// never asks it again (a resolver that answers differently after a
    /// deploy routes new events elsewhere and skips nothing already
    /// enqueued). A name no store accepts, or a panic, sends the event to the
    /// reaction's invalid-target queue, where it blocks with the reason; so
    /// does an error (an event a typed resolver cannot decode).
    Dynamic(Arc<ResolveFn>),
}

impl Resolver {
    /// The target stream of `event`, if any, or why it cannot be routed.
    pub fn resolve(&self, event: &Event) -> std::result::Result<Option<String>, String> {
        match self {
            Resolver::Static(s) => Ok(Some(s.clone())),
            Resolver::Dynamic(f) => f(event),
        }
    }

    /// True when `event` targets `stream` (no allocation for static targets).
    pub fn targets(&self, event: &Event, stream: &str) -> bool {
        match self {
            Resolver::Static(s) => s == stream,
            Resolver::Dynamic(f) => matches!(f(event), Ok(Some(t)) if t == stream),
        }
    }

    /// The one queue of a static resolver.
    pub fn target(&self) -> Option<&str> {
        match self {
            Resolver::Static(s) => Some(s),
            Resolver::Dynamic(_) => None,
        }
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolver::Static(s) => write!(f, "Static({s:?})"),
            Resolver::Dynamic(_) => f.write_str("Dynamic(..)"),
        }
    }
}

/// What to do when a reaction has failed more than `max_retries` times.
/// Failures caused by the store being unavailable
/// ([`crate::Error::Unavailable`] returned by the handler) do not count: they
/// are retried with backoff until the store is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Exhausted {
    /// Block the queue until an operator unblocks or resets it (default).
    #[default]
    Block,
    /// Log the failure, acknowledge the event and go on with the queue.
    Skip,
}

/// Retry and priority options of a reaction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReactionOptions {
    /// Retries after the first failed attempt (3: four attempts in all).
    pub max_retries: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// What to do when retries run out.
    pub exhausted: Exhausted,
    /// Claim priority of the queues this reaction targets (higher first).
    pub priority: i32,
    /// How long one handler call may run ([`DEFAULT_TIMEOUT`], 60 s). Past
    /// it the broker cancels the call (the handler's context reports
    /// cancellation and the future is dropped) and counts a failure, retried
    /// with backoff. `None`: no limit (a handler that never returns then
    /// stalls its queue, renewing its lease forever).
    #[serde(default = "default_timeout")]
    pub timeout: Option<Duration>,
}

fn default_timeout() -> Option<Duration> {
    Some(DEFAULT_TIMEOUT)
}

impl Default for ReactionOptions {
    fn default() -> Self {
        ReactionOptions {
            max_retries: 3,
            backoff: Backoff::default(),
            exhausted: Exhausted::Block,
            priority: 0,
            timeout: default_timeout(),
        }
    }
}

/// What a handler returns instead of success: a failure, transient by
/// default (retried with backoff), [`HandlerError::permanent`] (blocks the
/// queue at once), or a *deferral*, [`HandlerError::defer_for`] /
/// [`HandlerError::defer_until`]: "not yet, call me again then".
///
/// A deferral is not a failure. The queue keeps its position (the events
/// before this one that succeeded in the batch are acknowledged), the next
/// attempt time is stored in the queue on the store's clock, as a retry's
/// is, so any broker picks the event up then and none before; the retry
/// count is not used up and no error is recorded. Other queues are not
/// affected; later events of the same queue wait behind the deferred one
/// (order is kept). Every reaction of the event runs again at the next
/// attempt, so one that succeeded beside a deferring one is called again,
/// as after a failure (handlers are idempotent).
///
/// ```
/// use std::time::Duration;
/// use act::{HandlerError, Reaction};
/// let reminder = Reaction::on("OrderPlaced").handle(|event, ctx| async move {
///     // `created` and `ctx.now()` are both on the store's clock.
///     let due = event.meta.created + chrono::Duration::hours(24);
///     if ctx.now() < due {
///         return Err(HandlerError::defer_until(due));
///     }
///     // … send the reminder
///     Ok(())
/// });
/// # let _ = reminder;
/// ```
#[derive(Debug)]
pub struct HandlerError {
    error: BoxError,
    permanent: bool,
    defer: Option<Deferral>,
}

/// When a deferred event is to be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// After this long, on the store's clock.
    For(Duration),
    /// At this time on the store's clock. The broker turns it into a delay
    /// from the store's time as it knows it ([`crate::Context::now`]: the
    /// store's time at claim plus the time passed since; zero when past),
    /// and the store adds that delay to its clock.
    Until(chrono::DateTime<chrono::Utc>),
}

impl Deferral {
    /// The delay from `now` (zero when the time is past).
    pub fn delay(&self, now: chrono::DateTime<chrono::Utc>) -> Duration {
        match self {
            Deferral::For(d) => *d,
            Deferral::Until(at) => (*at - now).to_std().unwrap_or(Duration::ZERO),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Deferred(String);

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        HandlerError {
            error: error.into(),
            permanent: false,
            defer: None,
        }
    }

    /// A failure retrying cannot fix: the queue blocks at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            error: error.into(),
            permanent: true,
            defer: None,
        }
    }

    /// Not a failure: call the handler again with this event after `delay`
    /// (store's clock). See the type's documentation.
    pub fn defer_for(delay: Duration) -> Self {
        HandlerError {
            error: Box::new(Deferred(format!("deferred for {delay:?}"))),
            permanent: false,
            defer: Some(Deferral::For(delay)),
        }
    }

    /// Not a failure: call the handler again with this event at `at` on
    /// the store's clock (a time already past means at once). Compare with
    /// [`crate::Context::now`], not the machine's clock. See
    /// [`Deferral::Until`].
    pub fn defer_until(at: chrono::DateTime<chrono::Utc>) -> Self {
        HandlerError {
            error: Box::new(Deferred(format!("deferred until {}", at.to_rfc3339()))),
            permanent: false,
            defer: Some(Deferral::Until(at)),
        }
    }

    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The deferral, when the handler asked to be called again later.
    pub fn deferral(&self) -> Option<Deferral> {
        self.defer
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        let mut source = self.error.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::transient(e)
    }
}

/// A registered reaction. Build one with [`Reaction::on`].
#[derive(Clone)]
pub struct Reaction {
    name: String,
    events: Vec<String>,
    resolver: Resolver,
    options: ReactionOptions,
    start: Option<Start>,
    handler: Handler,
    /// Takes a whole window of its queue in one call, when set.
    batch: Option<BatchHandler>,
    /// Why the reaction cannot be registered (a typed reaction whose event
    /// names serde could not give); [`crate::ActBuilder::build`] refuses it.
    invalid: Option<String>,
    /// Its histogram handles, made at the first handler call (so a metrics
    /// recorder must be installed before brokers run).
    pub(crate) histograms: std::sync::OnceLock<crate::metrics::ReactionHistograms>,
}

impl std::fmt::Debug for Reaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaction")
            .field("name", &self.name)
            .field("events", &self.events)
            .field("resolver", &self.resolver)
            .field("options", &self.options)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Reaction {
    /// Starts a reaction to events named `event`.
    pub fn on(event: impl Into<String>) -> ReactionBuilder {
        let event = event.into();
        ReactionBuilder {
            name: None,
            events: vec![event],
            resolver: None,
            options: ReactionOptions::default(),
            start: None,
        }
    }

    /// The reaction's name: its subscription in the store and part of the
    /// idempotency key of what it appends.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it starts when the store sees it for the first time (`None`:
    /// the default of [`crate::subscription::resolve_start`]).
    pub fn start(&self) -> Option<Start> {
        self.start
    }

    /// The event names it reacts to.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Its resolver.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Its options.
    pub fn options(&self) -> &ReactionOptions {
        &self.options
    }

    /// Calls the handler.
    pub fn call(&self, event: Arc<Event>, ctx: Context) -> HandlerFuture {
        (self.handler)(event, ctx)
    }

    /// True when the reaction takes windows of its queue in one call
    /// ([`ReactionBuilder::handle_batch`]).
    pub fn is_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Calls the batch handler with `events` (the per-event handler, one
    /// event at a time, for a reaction that has none).
    pub fn call_batch(&self, events: Vec<Arc<Event>>, ctx: Context) -> HandlerFuture {
        match &self.batch {
            Some(b) => b(events, ctx),
            None => {
                let handler = self.handler.clone();
                Box::pin(async move {
                    for e in events {
                        handler(e, ctx.clone()).await?;
                    }
                    Ok(())
                })
            }
        }
    }

    /// Why this reaction cannot be registered, if it cannot.
    pub fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    pub(crate) fn set_invalid(&mut self, invalid: Option<String>) {
        self.invalid = invalid;
    }
}

/// Builds a [`Reaction`]; finish with [`ReactionBuilder::handle`].
#[must_use = "a reaction does nothing until `.handle(…)` builds it and it is registered"]
pub struct ReactionBuilder {
    name: Option<String>,
    events: Vec<String>,
    resolver: Option<Resolver>,
    options: ReactionOptions,
    start: Option<Start>,
}

impl ReactionBuilder {
    /// Also react to events named `event`.
    pub fn also(mut self, event: impl Into<String>) -> Self {
        self.events.push(event.into());
        self
    }

    /// Names the reaction (default: the first event name). The name is the
    /// reaction's durable subscription (its progress in the store) and part
    /// of the idempotency key of the events the handler appends: keep it
    /// stable across deployments.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sends every event to one queue.
    pub fn to_stream(mut self, stream: impl Into<String>) -> Self {
        self.resolver = Some(Resolver::Static(stream.into()));
        self
    }

    /// Picks the queue per event (`None` skips it). Must be pure: it runs
    /// once per event at correlation (again for a reset's replay).
    pub fn to<F>(mut self, resolve: F) -> Self
    where
        F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
    {
        self.resolver = Some(Resolver::Dynamic(Arc::new(move |e: &Event| Ok(resolve(e)))));
        self
    }

    /// Sets the resolver.
    pub fn resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Sets all options.
    pub fn options(mut self, options: ReactionOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the number of retries before the queue blocks.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.options.max_retries = n;
        self
    }

    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.options.backoff = backoff;
        self
    }

    /// Sets the priority of the target queues.
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    /// Sets how long one handler call may run before it is cancelled and
    /// counted as a failure (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Lets handler calls run for as long as they take.
    pub fn no_timeout(mut self) -> Self {
        self.options.timeout = None;
        self
    }

    /// When the store first sees this reaction, it handles the whole log,
    /// history included: what a projection or read model needs.
    pub fn from_beginning(self) -> Self {
        self.start(Start::Beginning)
    }

    /// When the store first sees this reaction, it handles only events
    /// committed from then on: what a reaction with side effects (e-mails,
    /// calls to other systems) added to a running application needs.
    pub fn from_now(self) -> Self {
        self.start(Start::Now)
    }

    /// When the store first sees this reaction, it handles events with an
    /// id above `id`.
    pub fn from_event(self, id: i64) -> Self {
        self.start(Start::After(id))
    }

    /// Sets where the reaction starts when the store first sees it. Once
    /// registered, a reaction goes on from its stored progress whatever its
    /// declaration says.
    pub fn start(mut self, start: Start) -> Self {
        self.start = Some(start);
        self
    }

    /// Finishes the reaction with its handler. Without a resolver, each event
    /// goes to a queue named after its own stream.
    pub fn handle<F, Fut>(self, handler: F) -> Reaction
    where
        F: Fn(Arc<Event>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let name = self.name.unwrap_or_else(|| self.events[0].clone());
        Reaction {
            name,
            events: self.events,
            resolver: self.resolver.unwrap_or_else(|| {
                Resolver::Dynamic(Arc::new(|e: &Event| Ok(Some(e.stream.clone()))))
            }),
            options: self.options,
            start: self.start,
            handler: Arc::new(move |e, ctx| Box::pin(handler(e, ctx))),
            batch: None,
            invalid: None,
            histograms: std::sync::OnceLock::new(),
        }
    }

    /// Finishes the reaction with a *batch* handler: it gets the queue's
    /// pending events in id order, as many as the broker claimed (up to
    /// [`crate::BrokerOptions::batch`]) that are for this reaction alone,
    /// in one call: what a projection needs to write a whole window in one
    /// transaction, or one multi-row statement, instead of one per event.
    ///
    /// Failures land on the exact event, as for a per-event handler: when a
    /// batch call fails (error, panic, timeout, deferral), the broker calls
    /// the handler again with one event at a time from the start of the
    /// window, so the events before the first failing one are acknowledged
    /// and the retry, block or deferral is recorded for that event. So a
    /// batch handler must be idempotent per event (its writes an upsert, or
    /// undone when it fails: a transaction). A queue that is retrying, or
    /// walking a lapsed batch, is handled one event at a time. Appends from
    /// a batch call ([`Context::append`]) are keyed by the window's last
    /// event: prefer a per-event reaction for what emits events.
    ///
    /// ```
    /// use act::Reaction;
    /// let totals = Reaction::on("Deposited")
    ///     .to_stream("totals")
    ///     .handle_batch(|events, _ctx| async move {
    ///         let sum: u64 = events.iter().filter_map(|e| e.data["amount"].as_u64()).sum();
    ///         // one write of `sum` and the last id, in one transaction
    ///         let _ = sum;
    ///         Ok(())
    ///     });
    /// assert!(totals.is_batch());
    /// ```
    pub fn handle_batch<F, Fut>(self, handler: F) -> Reaction
    where
        F: Fn(Vec<Arc<Event>>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler: BatchHandler = Arc::new(move |events, ctx| Box::pin(handler(events, ctx)));
        let single = handler.clone();
        let mut r = self.handle(move |e, ctx| single(vec![e], ctx));
        r.batch = Some(handler);
        r
    }
}
