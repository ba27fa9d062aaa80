//! What a handler gets besides its event: the queue it runs for, the attempt
//! number, a way to run actions that carry correlation, causation and an
//! idempotency key, and a signal that its lease was lost or shutdown began.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::{Act, Invocation};
use crate::error::Result;
use crate::event::{Actor, Append, Event};
use crate::queue::{Fenced, LeaseRef};
use crate::state::{Snapshot, State};
use crate::store::Store;
use crate::trace::TraceContext;

/// The context of one handler call. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    act: Act,
    stream: String,
    reaction: String,
    source: Arc<Event>,
    attempt: u32,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
    timed_out: CancellationToken,
    appends: AtomicU32,
    trace: TraceContext,
    clock: StoreTime,
    lease: LeaseRef,
    mark: i64,
    /// The queue's position as this batch left it: moved by handlers that
    /// acknowledged their events in their own transaction.
    position: Arc<AtomicI64>,
}

/// The store's clock as a broker knows it: the store's time when it claimed
/// the batch (its lease's expiry minus the lease's length) plus the time
/// passed, on this process's monotonic clock, since the claim returned (so
/// it is behind the store's real clock by up to the claim's round trip,
/// never ahead). Not the process's wall
/// clock, so a skewed machine clock does not move deferrals and timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreTime {
    pub at_claim: chrono::DateTime<chrono::Utc>,
    pub since: std::time::Instant,
}

impl StoreTime {
    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        crate::clock::add(self.at_claim, self.since.elapsed())
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("stream", &self.inner.stream)
            .field("reaction", &self.inner.reaction)
            .field("event", &self.inner.source.id)
            .field("attempt", &self.inner.attempt)
            .finish()
    }
}

impl Context {
    // One caller (the batch runner), which has each piece at hand.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        act: Act,
        stream: &str,
        reaction: &str,
        source: Arc<Event>,
        attempt: u32,
        lease_lost: CancellationToken,
        shutdown: CancellationToken,
        trace: TraceContext,
        clock: StoreTime,
        fence: (&crate::queue::Lease, Arc<AtomicI64>),
    ) -> Self {
        let (lease, position) = fence;
        Context {
            inner: Arc::new(Inner {
                act,
                stream: stream.to_string(),
                reaction: reaction.to_string(),
                source,
                attempt,
                lease_lost,
                shutdown,
                timed_out: CancellationToken::new(),
                appends: AtomicU32::new(0),
                trace,
                clock,
                lease: lease.reference(),
                mark: lease.mark,
                position,
            }),
        }
    }

    /// The queue (target stream) this call runs for.
    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// The reaction's name.
    pub fn reaction(&self) -> &str {
        &self.inner.reaction
    }

    /// The event being handled.
    pub fn event(&self) -> &Arc<Event> {
        &self.inner.source
    }

    /// 1 for the first attempt at this event, 2 after one stored failure, …
    /// Read from the queue's stored retry count, so it holds across brokers
    /// and restarts.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// This call's trace context: the event's trace id and the handler
    /// span's own span id (see [`crate::trace`]). Send it with outgoing
    /// requests (`traceparent` header); what [`Context::act`] and
    /// [`Context::append`] write continues it.
    pub fn trace(&self) -> &TraceContext {
        &self.inner.trace
    }

    /// The application, for loads and queries.
    pub fn app(&self) -> &Act {
        &self.inner.act
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.inner.act.store()
    }

    /// True once the broker could not renew this queue's lease: another broker
    /// may now own it. Stop and return; what this call writes with
    /// [`Context::act`] stays idempotent, other effects are not fenced.
    pub fn lease_lost(&self) -> bool {
        self.inner.lease_lost.is_cancelled()
    }

    /// True once the broker began shutting down. Finish quickly or return.
    pub fn shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// True once the call ran past its reaction's timeout: the broker has
    /// counted it as a failure and is dropping it. Work the handler spawned
    /// should stop.
    pub fn timed_out(&self) -> bool {
        self.inner.timed_out.is_cancelled()
    }

    /// Resolves when the lease is lost, shutdown begins, or the call runs
    /// past its timeout.
    pub async fn cancelled(&self) {
        tokio::select! {
            _ = self.inner.lease_lost.cancelled() => {}
            _ = self.inner.shutdown.cancelled() => {}
            _ = self.inner.timed_out.cancelled() => {}
        }
    }

    pub(crate) fn timeout_token(&self) -> CancellationToken {
        self.inner.timed_out.clone()
    }

    /// Now on the store's clock, as this broker knows it: the store's time
    /// at claim plus the time passed since (the clock leases, retries and
    /// deferrals use; [`crate::HandlerError::defer_until`] is measured
    /// against it). Behind the store's real clock by at most the claim's
    /// round trip, never ahead.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }

    /// The lease this call runs under, for a store that acknowledges the
    /// handler's events inside the handler's own transaction (transactional
    /// projections: `act_pg::PgStore::project`,
    /// `act_sqlite::SqliteStore::project`).
    pub fn fenced(&self) -> Fenced {
        Fenced {
            lease: self.inner.lease.clone(),
            from: self.inner.position.load(Ordering::SeqCst),
            mark: self.inner.mark,
        }
    }

    /// Tells the broker that the store acknowledged this queue's events up
    /// to `through` inside the handler's transaction, which committed: the
    /// broker's own settlement then expects that position. Called by the
    /// stores' `project`, not by handlers.
    pub fn acknowledged(&self, through: i64) {
        self.inner.position.fetch_max(through, Ordering::SeqCst);
    }

    /// The idempotency key of this call's next append:
    /// `{reaction}:{source event id}:{stream}:{n}` where `n` counts this
    /// call's appends. A redelivered, deterministic handler makes the same keys.
    fn next_key(&self, stream: &str) -> String {
        let n = self.inner.appends.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}:{}:{}:{}",
            self.inner.reaction, self.inner.source.id, stream, n
        )
    }

    fn invocation(&self, stream: &str) -> Invocation {
        Invocation {
            actor: Actor::system(self.inner.reaction.clone()),
            correlation: Some(self.inner.source.meta.correlation.clone()),
            causation_event: Some(self.inner.source.reference()),
            idempotency_key: Some(self.next_key(stream)),
            trace: Some(self.inner.trace.clone()),
        }
    }

    /// Runs an action on `stream` as this reaction: the events carry the source
    /// event's correlation, name it as their cause, and are appended with an
    /// idempotency key, so a redelivery does not append them twice.
    pub async fn act<S: State>(&self, stream: &str, action: &S::Action) -> Result<Snapshot<S>> {
        let how = self.invocation(stream);
        self.inner.act.execute::<S>(stream, action, how).await
    }

    /// Schedules `timer` as this reaction ([`crate::Act::schedule`]): the
    /// schedule carries the source event's correlation and an idempotency
    /// key, so a redelivered handler does not schedule twice.
    pub async fn schedule(&self, timer: crate::timer::Timer) -> Result<Arc<Event>> {
        self.inner.act.timers_on()?;
        crate::timer::schedule(crate::timer::Writer::Reaction(self), &timer).await
    }

    /// Cancels the timer `key` as this reaction ([`crate::Act::cancel_timer`]).
    pub async fn cancel_timer(&self, key: &str) -> Result<bool> {
        self.inner.act.timers_on()?;
        crate::timer::cancel(crate::timer::Writer::Reaction(self), key).await
    }

    /// Appends raw messages as this reaction (correlation, causation, an
    /// idempotency key and a trace context continuing this call's filled
    /// in unless already set). Runs in an `act.append` span.
    pub async fn append(&self, mut append: Append) -> Result<Vec<Arc<Event>>> {
        let how = self.invocation(&append.stream);
        let span = tracing::debug_span!(
            "act.append",
            stream = %append.stream,
            events = append.messages.len(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent = tracing::field::Empty,
        );
        let trace = crate::trace::enter(
            &**self.inner.act.trace_propagator(),
            how.trace.as_ref(),
            &span,
        );
        if append.correlation.is_none() {
            append.correlation = how.correlation;
        }
        if append.causation.action.is_none() && append.causation.event.is_none() {
            append.causation.event = how.causation_event;
        }
        if append.causation.trace.is_none() {
            append.causation.trace = Some(trace);
        }
        if append.idempotency_key.is_none() {
            append.idempotency_key = how.idempotency_key;
        }
        if append.actor == Actor::default() {
            append.actor = how.actor;
        }
        self.inner.act.store().append(append).instrument(span).await
    }
}
