//! The application: a store, the registered reactions, and the action path
//! (load → decide → append with the version read).
//!
//! ```
//! # use std::sync::Arc;
//! use act::{Act, MemoryStore, Reaction};
//! let store = Arc::new(MemoryStore::new());
//! let app = Act::builder(store)
//!     .reaction(Reaction::on("Deposited").to_stream("totals").handle(|_e, _ctx| async { Ok(()) }))
//!     .build()
//!     .unwrap();
//! assert_eq!(app.registry().reactions().len(), 1);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::{Broker, BrokerOptions};
use crate::cache::StateCache;
use crate::error::{Error, Result};
use crate::event::{ActionRef, Actor, Append, Causation, Event, EventRef, ExpectedVersion};
use crate::query::Query;
use crate::reaction::Reaction;
use crate::state::{self, Action, Snapshot, State, SNAPSHOT};
use crate::store::Store;
use crate::subscription::{Subscription, SubscriptionState};
use crate::trace::{TraceContext, TracePropagator};
use tracing::Instrument;

/// The reactions of an application, indexed by event name and by name.
#[derive(Debug, Default)]
pub struct Registry {
    reactions: Vec<Arc<Reaction>>,
    by_event: HashMap<String, Vec<Arc<Reaction>>>,
    by_name: HashMap<String, Arc<Reaction>>,
    retired: Vec<String>,
}

impl Registry {
    /// Every reaction, in registration order.
    pub fn reactions(&self) -> &[Arc<Reaction>] {
        &self.reactions
    }

    /// The reaction named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Reaction>> {
        self.by_name.get(name)
    }

    /// Where reaction `name` was registered (0 for the first).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.reactions.iter().position(|r| r.name() == name)
    }

    /// Names of reactions the application declares retired
    /// ([`ActBuilder::retire`]).
    pub fn retired(&self) -> &[String] {
        &self.retired
    }

    /// The reactions to events named `name`, in registration order.
    pub fn for_event(&self, name: &str) -> &[Arc<Reaction>] {
        self.by_event.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True when no reaction is registered.
    pub fn is_empty(&self) -> bool {
        self.reactions.is_empty()
    }
}

/// How an action is invoked: who, in which correlation, caused by what, and
/// with which idempotency key. Reactions fill this in through their context.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// Who asks.
    pub actor: Actor,
    /// The correlation to continue (`None`: start a new one).
    pub correlation: Option<String>,
    /// The event whose reaction runs the action.
    pub causation_event: Option<EventRef>,
    /// Makes the append idempotent.
    pub idempotency_key: Option<String>,
    /// The trace to continue (e.g. an HTTP request's `traceparent`): the
    /// action gets the same trace id and a new span id. `None`: the
    /// [`TracePropagator`]'s current context, or a new trace (see
    /// [`crate::trace`]).
    pub trace: Option<TraceContext>,
}

impl Invocation {
    /// An invocation by `actor`, starting a new correlation.
    pub fn by(actor: Actor) -> Self {
        Invocation {
            actor,
            ..Default::default()
        }
    }

    /// Continues the trace `trace` ([`Invocation::trace`]).
    pub fn traced(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }
}

/// An [`Invocation`] borrowed for one action: [`Act::act`] runs one without
/// copying its actor first (the append copies what its events keep).
struct Call<'a> {
    actor: &'a Actor,
    correlation: Option<&'a String>,
    causation_event: Option<&'a EventRef>,
    idempotency_key: Option<&'a String>,
}

/// An application: a store and its reactions. Cheap to clone.
#[derive(Clone)]
pub struct Act {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    registry: Registry,
    cache: StateCache,
    propagator: Arc<dyn TracePropagator>,
    timers: bool,
}

impl std::fmt::Debug for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Act")
            .field("reactions", &self.inner.registry.reactions.len())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Act`].
#[must_use]
pub struct ActBuilder {
    store: Arc<dyn Store>,
    reactions: Vec<Reaction>,
    retired: Vec<String>,
    cache: usize,
    propagator: Arc<dyn TracePropagator>,
    timers: bool,
}

impl ActBuilder {
    /// Turns durable timers on ([`crate::timer`]): registers the built-in
    /// reaction `act.timers`, which fires them, and lets this application
    /// schedule and cancel them. Every process that schedules timers, and
    /// at least one that runs brokers, needs it.
    pub fn timers(mut self) -> Self {
        self.timers = true;
        self
    }

    /// Registers a reaction.
    pub fn reaction(mut self, reaction: Reaction) -> Self {
        self.reactions.push(reaction);
        self
    }

    /// Registers several reactions.
    pub fn reactions(mut self, reactions: impl IntoIterator<Item = Reaction>) -> Self {
        self.reactions.extend(reactions);
        self
    }

    /// Declares a reaction the application no longer has. When a broker
    /// registers the application, the store retires it: its pending work is
    /// dropped (and logged with its count), and no broker runs it again.
    /// Until then, queues with its work wait for a broker that has it.
    pub fn retire(mut self, name: impl Into<String>) -> Self {
        self.retired.push(name.into());
        self
    }

    /// How many loaded states to keep (default 10,000; 0 turns the cache off).
    /// A cached state costs one indexed read of its stream's last event to
    /// confirm, instead of a replay from the last snapshot.
    pub fn state_cache(mut self, streams: usize) -> Self {
        self.cache = streams;
        self
    }

    /// Connects act's trace contexts to a tracer (OpenTelemetry). Wins over
    /// the process's default ([`crate::trace::set_default_propagator`]);
    /// without either, act derives them itself. See [`crate::trace`].
    pub fn trace_propagator(mut self, propagator: Arc<dyn TracePropagator>) -> Self {
        self.propagator = propagator;
        self
    }

    /// Checks the registrations and builds the application. Fails when two
    /// reactions share a name (their subscriptions and idempotency keys
    /// would collide), a name breaks the limits ([`crate::limits`]), a
    /// reaction listens to the reserved snapshot event, or a reaction is
    /// both registered and retired.
    pub fn build(mut self) -> Result<Act> {
        if let Some(r) = self
            .reactions
            .iter()
            .find(|r| r.name() == crate::timer::REACTION)
        {
            return Err(Error::InvalidInput(format!(
                "reaction `{}`: the name is reserved for timers (turn them on with `.timers()`)",
                r.name()
            )));
        }
        if self.timers {
            self.reactions.push(crate::timer::reaction());
        }
        let timers = self.timers;
        let mut registry = Registry::default();
        for name in &self.retired {
            crate::limits::check_name("a retired reaction's name", name)?;
        }
        registry.retired = self.retired;
        for r in self.reactions {
            if let Some(why) = r.invalid() {
                return Err(Error::InvalidInput(format!(
                    "reaction `{}`: {why}",
                    r.name()
                )));
            }
            crate::limits::check_name("the reaction name", r.name())?;
            if registry.by_name.contains_key(r.name()) {
                return Err(Error::InvalidInput(format!(
                    "two reactions are named `{}`: names must be unique",
                    r.name()
                )));
            }
            if registry.retired.iter().any(|n| n == r.name()) {
                return Err(Error::InvalidInput(format!(
                    "reaction `{}` is registered and declared retired",
                    r.name()
                )));
            }
            if let Some(target) = r.resolver().target() {
                crate::limits::check_name(
                    &format!("the target of reaction `{}`", r.name()),
                    target,
                )?;
            }
            if r.events().iter().any(|e| e == SNAPSHOT) {
                return Err(Error::InvalidInput(format!(
                    "reaction `{}` listens to `{SNAPSHOT}`, which is reserved",
                    r.name()
                )));
            }
            let r = Arc::new(r);
            registry.by_name.insert(r.name().to_string(), r.clone());
            for e in r.events() {
                let list = registry.by_event.entry(e.clone()).or_default();
                if !list.iter().any(|x| Arc::ptr_eq(x, &r)) {
                    list.push(r.clone());
                }
            }
            registry.reactions.push(r);
        }
        Ok(Act {
            inner: Arc::new(Inner {
                store: self.store,
                registry,
                cache: StateCache::new(self.cache),
                propagator: self.propagator,
                timers,
            }),
        })
    }
}

impl Act {
    /// Starts building an application on `store`.
    pub fn builder(store: Arc<dyn Store>) -> ActBuilder {
        ActBuilder {
            store,
            reactions: Vec::new(),
            retired: Vec::new(),
            cache: 10_000,
            propagator: crate::trace::default_propagator(),
            timers: false,
        }
    }

    /// Schedules `timer` ([`crate::timer`]): appends its schedule to the
    /// timer's stream (replacing a pending time of the same key) and
    /// returns that event. Refused for a key that already fired
    /// ([`Error::Rejected`]), and when timers are off. Costs one query and
    /// one append (more when another writer changes the same timer at
    /// once).
    pub async fn schedule(&self, timer: crate::timer::Timer) -> Result<Arc<Event>> {
        self.timers_on()?;
        crate::timer::schedule(crate::timer::Writer::App(&**self.store()), &timer).await
    }

    /// Cancels the timer `key`: true when a pending timer was cancelled,
    /// false when there was none to cancel (never scheduled, cancelled,
    /// fired). A cancelled timer never fires. Costs one query and one
    /// append.
    pub async fn cancel_timer(&self, key: &str) -> Result<bool> {
        self.timers_on()?;
        crate::timer::cancel(crate::timer::Writer::App(&**self.store()), key).await
    }

    /// Where the timer `key` is in its life. One query.
    pub async fn timer(&self, key: &str) -> Result<crate::timer::TimerStatus> {
        crate::timer::status(&**self.store(), key).await
    }

    pub(crate) fn timers_on(&self) -> Result<()> {
        if self.inner.timers {
            Ok(())
        } else {
            Err(Error::InvalidInput(
                "timers are off: build the application with `.timers()`".into(),
            ))
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The reactions.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The trace propagator ([`ActBuilder::trace_propagator`]).
    pub fn trace_propagator(&self) -> &Arc<dyn TracePropagator> {
        &self.inner.propagator
    }

    /// A broker for this application (not started).
    pub fn broker(&self, options: BrokerOptions) -> Broker {
        Broker::new(self.clone(), options)
    }

    /// Registers the application's reactions with the store (brokers do this
    /// when they start, and again every heartbeat): each reaction the store
    /// has not seen gets its start ([`crate::subscription::resolve_start`]);
    /// reactions declared retired ([`ActBuilder::retire`]) are retired.
    /// Returns every subscription the store holds. Call it at startup to
    /// fail fast on an undeclared start. Costs two or three round trips
    /// (four when retiring).
    pub async fn register(&self) -> Result<Vec<SubscriptionState>> {
        let store = self.store();
        let known = store.subscriptions().await?;
        let is_known = |name: &str| known.iter().any(|s| s.name == name);
        let registry = self.registry();
        let retire: Vec<String> = registry
            .retired()
            .iter()
            .filter(|n| known.iter().any(|s| &s.name == *n && s.retired.is_none()))
            .cloned()
            .collect();
        if !retire.is_empty() {
            for r in store.retire(&retire).await? {
                tracing::warn!(reaction = %r.name, dropped = r.dropped, queues = r.queues,
                    "retired a reaction the application no longer has: its pending work was dropped");
            }
        }
        let new: Vec<&Arc<Reaction>> = registry
            .reactions()
            .iter()
            .filter(|r| !is_known(r.name()))
            .collect();
        let (head, legacy) = if new.is_empty() {
            (0, 0)
        } else {
            (store.head().await?, store.legacy_checkpoint().await?)
        };
        let first = known.is_empty();
        let mut subscriptions = Vec::with_capacity(registry.reactions().len());
        for r in registry.reactions() {
            let start = if is_known(r.name()) {
                0
            } else {
                crate::subscription::resolve_start(r.name(), r.start(), head, legacy, first)?
            };
            subscriptions.push(Subscription {
                name: r.name().to_string(),
                events: r.events().to_vec(),
                target: r.resolver().target().map(str::to_string),
                start,
            });
        }
        if first && head > 0 && new.iter().any(|r| r.start().is_none()) {
            tracing::info!(head, legacy, "first registration of this application's reactions: those without a declared start handle the log from {}",
                if legacy > 0 { "where the schema-1 checkpoint was" } else { "the beginning" });
        }
        let states = store.subscribe(&subscriptions).await?;
        for s in &states {
            if s.retired.is_some() && registry.get(&s.name).is_some() {
                tracing::warn!(reaction = %s.name, "this reaction is retired in the store: no broker runs it (register it under a new name to run it again)");
            }
        }
        Ok(states)
    }

    /// Loads `S` from `stream`: from the state cache when the stream's last
    /// event is the one cached (one indexed read), else by replaying the
    /// stream from its last snapshot.
    pub async fn load<S: State>(&self, stream: &str) -> Result<Snapshot<S>> {
        if let Some((state, version, since_snapshot)) = self.inner.cache.get::<S>(stream) {
            let last = self
                .store()
                .query(&Query::new().stream(stream).backward().limit(1))
                .await?;
            if last.first().map(|e| e.version) == Some(version) {
                return Ok(Snapshot {
                    state,
                    version: Some(version),
                    since_snapshot,
                    events: Vec::new(),
                });
            }
        }
        let snap = state::load::<S>(&**self.store(), stream).await?;
        if let Some(v) = snap.version {
            self.inner
                .cache
                .put(stream, &snap.state, v, snap.since_snapshot);
        }
        Ok(snap)
    }

    /// Runs `action` on `stream` as `actor`: loads the state, decides, and
    /// appends the events with the version read. A broken invariant is
    /// [`Error::Rejected`] and a concurrent writer [`Error::Concurrency`];
    /// in both cases nothing is appended.
    ///
    /// Costs one query and one append (none when the action emits nothing).
    pub async fn act<S: State>(
        &self,
        stream: &str,
        action: &S::Action,
        actor: &Actor,
    ) -> Result<Snapshot<S>> {
        let call = Call {
            actor,
            correlation: None,
            causation_event: None,
            idempotency_key: None,
        };
        self.run::<S>(stream, action, call, None).await
    }

    /// Runs `action` with full control over correlation, causation,
    /// idempotency and trace (what reactions use through their context).
    /// Runs in an `act.action` span; the events carry the action's trace
    /// context ([`crate::trace`]).
    ///
    /// With an idempotency key, an action refused by its state first checks
    /// whether the key was already used (a redelivered reaction whose first
    /// run succeeded): if so, it returns that run's events instead of the
    /// refusal.
    pub async fn execute<S: State>(
        &self,
        stream: &str,
        action: &S::Action,
        how: Invocation,
    ) -> Result<Snapshot<S>> {
        let call = Call {
            actor: &how.actor,
            correlation: how.correlation.as_ref(),
            causation_event: how.causation_event.as_ref(),
            idempotency_key: how.idempotency_key.as_ref(),
        };
        self.run::<S>(stream, action, call, how.trace.as_ref())
            .await
    }

    /// [`Act::execute`] of a borrowed invocation whose trace is `parent`.
    async fn run<S: State>(
        &self,
        stream: &str,
        action: &S::Action,
        how: Call<'_>,
        parent: Option<&TraceContext>,
    ) -> Result<Snapshot<S>> {
        let span = tracing::info_span!(
            "act.action",
            stream,
            action = action.name(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent = tracing::field::Empty,
        );
        let trace = crate::trace::enter(&**self.trace_propagator(), parent, &span);
        self.decide_and_append::<S>(stream, action, &how, &trace)
            .instrument(span)
            .await
    }

    async fn decide_and_append<S: State>(
        &self,
        stream: &str,
        action: &S::Action,
        how: &Call<'_>,
        trace: &TraceContext,
    ) -> Result<Snapshot<S>> {
        // Optimistic: a cached state is used without reading the stream. If
        // it is stale, the append's version check refuses it and we reload;
        // a refusal or a no-op decided on an unconfirmed state is confirmed
        // on a fresh load before it is returned.
        let (mut snap, mut confirmed) = match self.inner.cache.get::<S>(stream) {
            Some((state, version, since_snapshot)) => (
                Snapshot {
                    state,
                    version: Some(version),
                    since_snapshot,
                    events: Vec::new(),
                },
                false,
            ),
            None => (self.load::<S>(stream).await?, true),
        };
        loop {
            let decided = snap.state.decide(action);
            if !confirmed && !matches!(&decided, Ok(events) if !events.is_empty()) {
                snap = self.load::<S>(stream).await?;
                confirmed = true;
                continue;
            }
            let events = match decided {
                Ok(events) => events,
                Err(invariant) => {
                    if let Some(key) = how.idempotency_key {
                        // An empty append with a key only looks the key up.
                        let lookup = Append::new(stream, Vec::new()).idempotent(key.clone());
                        let first = self.store().append(lookup).await?;
                        if !first.is_empty() {
                            snap.events = first;
                            return Ok(snap);
                        }
                    }
                    return Err(Error::Rejected {
                        stream: stream.to_string(),
                        action: action.name().to_string(),
                        reason: invariant.0,
                    });
                }
            };
            if events.is_empty() {
                return Ok(snap);
            }
            match self
                .append_decided(stream, action, how, trace, &mut snap, events)
                .await
            {
                Err(Error::Concurrency { .. }) if !confirmed => {
                    snap = self.load::<S>(stream).await?;
                    confirmed = true;
                }
                other => return other.map(|()| snap),
            }
        }
    }

    /// Appends what `snap.state` decided, with the version it was read at,
    /// and moves `snap` (and the cache) to the new state.
    async fn append_decided<S: State>(
        &self,
        stream: &str,
        action: &S::Action,
        how: &Call<'_>,
        trace: &TraceContext,
        snap: &mut Snapshot<S>,
        events: Vec<S::Event>,
    ) -> Result<()> {
        let mut messages = Vec::with_capacity(events.len() + 1);
        let mut next = snap.state.clone();
        for e in &events {
            messages.push(state::encode(e)?);
            next.apply(e);
        }
        let since = snap.since_snapshot + events.len() as u64;
        let take_snapshot = S::SNAPSHOT_EVERY.is_some_and(|every| since >= every.max(1));
        if take_snapshot {
            let data = serde_json::to_value(&next)
                .map_err(|e| Error::decode(format!("a snapshot of stream `{stream}`"), e))?;
            messages.push(crate::event::Message::new(SNAPSHOT, data));
        }
        let append = Append {
            stream: stream.to_string(),
            messages,
            expected: ExpectedVersion::after(snap.version),
            correlation: how.correlation.cloned(),
            causation: Causation {
                action: Some(ActionRef {
                    name: action.name().to_string(),
                    stream: stream.to_string(),
                }),
                event: how.causation_event.cloned(),
                trace: Some(trace.clone()),
            },
            actor: how.actor.clone(),
            idempotency_key: how.idempotency_key.cloned(),
        };
        // With a key, the store may answer with the events of an earlier
        // append: keep what we sent to tell them apart.
        let sent: Option<Vec<crate::event::Message>> =
            how.idempotency_key.map(|_| append.messages.clone());
        let first_version = snap.version.map_or(0, |v| v + 1);
        let committed = {
            let span = tracing::debug_span!("act.append", stream, events = append.messages.len());
            self.store().append(append).instrument(span).await?
        };
        let ours = committed
            .first()
            .is_some_and(|e| e.version == first_version)
            && sent.as_ref().is_none_or(|sent| {
                sent.len() == committed.len()
                    && sent
                        .iter()
                        .zip(&committed)
                        .all(|(m, e)| m.name == e.name && m.data == e.data)
            });
        if ours {
            // Our own events: the state is the one we decided.
            snap.state = next;
            snap.since_snapshot = if take_snapshot { 0 } else { since };
            snap.version = committed.last().map(|e| e.version);
            if let Some(v) = snap.version {
                self.inner
                    .cache
                    .put(stream, &snap.state, v, snap.since_snapshot);
            }
        } else if !committed.is_empty() {
            // The key was used before: the stream holds that append's events;
            // read the state as it is.
            let fresh = self.load::<S>(stream).await?;
            snap.state = fresh.state;
            snap.version = fresh.version;
            snap.since_snapshot = fresh.since_snapshot;
        }
        snap.events = committed
            .into_iter()
            .filter(|e| e.name != SNAPSHOT)
            .collect();
        Ok(())
    }
}

/// Events (not snapshots) of a slice, for callers that count what they wrote.
pub fn domain_events(events: &[Arc<Event>]) -> impl Iterator<Item = &Arc<Event>> {
    events.iter().filter(|e| e.name != SNAPSHOT)
}
