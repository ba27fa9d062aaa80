//! Runs one claimed batch: the queue's events in id order, each through the
//! reactions its work names, stopping at the first failure.
//!
//! The result is a [`Settlement`] the broker writes back: an ack up to the
//! last event that succeeded, or a retry/block that keeps that partial
//! progress, or a deferral (a handler's "not yet") that keeps it too. A
//! handler runs for the reactions its queue's items name, never
//! for a reaction the item does not name (the resolver is not asked again),
//! so a resolver that answers differently after a deploy cannot make an event
//! skip its queue. Panics are caught, and calls that outlive their reaction's
//! timeout are cancelled; both are failures like an error.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::Act;
use crate::context::{Context, StoreTime};
use crate::event::Event;
use crate::metrics;
use crate::queue::{retries_after_failure, Batch, Lease, Settlement};
use crate::reaction::{Exhausted, Reaction};

/// Queues that hold events whose resolver answered a name no store accepts
/// (see [`crate::limits`]): `{prefix}{reaction}`. Such a queue blocks at
/// every event with the reason; nothing else is ever delivered from it.
pub const INVALID_TARGET_PREFIX: &str = "act.invalid-target.";

/// What a batch did, for the broker's counters and its settle call.
#[derive(Debug)]
pub(crate) struct Finished {
    pub lease: Lease,
    /// What to write back; `None` when the batch stopped before its first
    /// event (lease lost, shutdown): the lease is released instead, which
    /// leaves retry counts as they are.
    pub settlement: Option<Settlement>,
    /// Events that fully succeeded (or were skipped after exhausting retries).
    pub events: u64,
    /// Successful handler calls.
    pub reactions: u64,
    /// Exhausted reactions that were skipped (`Exhausted::Skip`).
    pub skipped: u64,
    /// Handler calls cancelled past their timeout.
    pub timeouts: u64,
    /// The same per reaction, for the metrics (a handful of entries).
    pub tallies: Vec<Tally>,
    /// Where the batch failed, when its settlement is a retry or a block,
    /// or which event a handler deferred, when it is a deferral.
    pub failed: Option<FailedAt>,
}

/// What one reaction did in a batch.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub reaction: String,
    /// Successful handler calls.
    pub delivered: u64,
    /// Failed handler calls (error, panic, timeout).
    pub failures: u64,
    /// Calls cancelled past the timeout.
    pub timeouts: u64,
    /// Events skipped after exhausting retries.
    pub skipped: u64,
    /// Calls that deferred their event ("not yet").
    pub deferrals: u64,
}

/// The event a batch stopped at, and the reaction that failed there (none
/// for an event no reaction could run: undecodable).
#[derive(Debug, Clone)]
pub(crate) struct FailedAt {
    pub reaction: Option<String>,
    pub event: i64,
    pub attempt: u32,
}

impl Finished {
    fn tally(&mut self, reaction: &str) -> &mut Tally {
        let i = match self.tallies.iter().position(|t| t.reaction == reaction) {
            Some(i) => i,
            None => {
                self.tallies.push(Tally {
                    reaction: reaction.to_string(),
                    ..Tally::default()
                });
                self.tallies.len() - 1
            }
        };
        &mut self.tallies[i]
    }

    fn stop(&mut self, settlement: Settlement, reaction: Option<&str>, event: i64, attempt: u32) {
        self.settlement = Some(settlement);
        self.failed = Some(FailedAt {
            reaction: reaction.map(str::to_string),
            event,
            attempt,
        });
    }
}

/// Processes `batch` in order, once `gate` (if any) opens. Stops before the
/// next event once `lease_lost` or `shutdown` fires. Runs in an `act.batch`
/// span.
pub(crate) async fn run(
    act: Act,
    batch: Batch,
    clock: StoreTime,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Finished {
    let mut names: Vec<&str> = batch
        .events
        .iter()
        .flat_map(|p| p.reactions.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let span = tracing::info_span!(
        "act.batch",
        queue = %batch.lease.stream,
        reactions = %names.join(","),
        events = batch.events.len(),
    );
    run_batch(act, batch, clock, lease_lost, shutdown, gate)
        .instrument(span)
        .await
}

async fn run_batch(
    act: Act,
    batch: Batch,
    clock: StoreTime,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Finished {
    if let Some(gate) = gate {
        tokio::select! {
            _ = gate => {}
            _ = lease_lost.cancelled() => {}
            _ = shutdown.cancelled() => {}
        }
    }
    let Batch { mut lease, events } = batch;
    // Moved by handlers that acknowledge inside their own transaction.
    let committed = Arc::new(std::sync::atomic::AtomicI64::new(lease.position));
    let mut done = Finished {
        settlement: None,
        lease: lease.clone(),
        events: 0,
        reactions: 0,
        skipped: 0,
        timeouts: 0,
        tallies: Vec::new(),
        failed: None,
    };
    let mut acked: Option<i64> = None;
    let invalid_target = lease.stream.strip_prefix(INVALID_TARGET_PREFIX);
    // Events before `skip` were handled by a batch call; events before
    // `single` go one at a time (a batch call over them failed).
    let (mut skip, mut single) = (0, 0);
    for (i, pending) in events.iter().enumerate() {
        if lease_lost.is_cancelled() || shutdown.is_cancelled() {
            break;
        }
        if i < skip {
            continue;
        }
        // A retrying queue (its first event failed before) and a lapsed
        // batch's walk go one event at a time: blame lands on one event.
        let batchable = i >= single
            && invalid_target.is_none()
            && !lease.suspect
            && !(i == 0 && lease.retries > 0);
        if let Some((reaction, end)) = batchable.then(|| window(&act, &events, i)).flatten() {
            let window: Vec<Arc<Event>> = events[i..end].iter().map(|p| p.event.clone()).collect();
            let n = window.len() as u64;
            let last = window[window.len() - 1].clone();
            let span = tracing::debug_span!(
                "act.handle",
                queue = %lease.stream,
                reaction = reaction.name(),
                event = last.id,
                events = n,
                attempt = 1,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                parent = tracing::field::Empty,
            );
            let trace = crate::trace::enter(&**act.trace_propagator(), last.meta.trace(), &span);
            let ctx = Context::new(
                act.clone(),
                &lease.stream,
                reaction.name(),
                last.clone(),
                1,
                lease_lost.clone(),
                shutdown.clone(),
                trace,
                clock,
                (&lease, committed.clone()),
            );
            metrics::commit_to_handler(&reaction, &window[0]);
            let started = std::time::Instant::now();
            let result = guarded(
                &reaction,
                ctx.timeout_token(),
                reaction.call_batch(window, ctx),
            )
            .instrument(span)
            .await;
            metrics::handler_duration(&reaction, started.elapsed());
            lease.position = lease
                .position
                .max(committed.load(std::sync::atomic::Ordering::SeqCst));
            match result {
                Ok(()) => {
                    done.reactions += n;
                    done.tally(reaction.name()).delivered += n;
                    done.events += n;
                    acked = Some(last.id);
                    done.settlement = Some(Settlement::ack(&lease, last.id));
                    skip = end;
                    continue;
                }
                Err(f) => {
                    tracing::debug!(queue = %lease.stream, reaction = reaction.name(), events = n,
                        error = %f.message, "a batch call failed: handling its events one at a time");
                    single = end;
                }
            }
        }
        let event = &pending.event;
        if let Some(reaction) = invalid_target {
            let error = invalid_target_error(&act, reaction, event);
            let attempt = lease.retries + 1;
            done.stop(
                Settlement::block(&lease, acked, error),
                Some(reaction),
                event.id,
                attempt,
            );
            return done;
        }
        if let Some(why) = event.undecodable_error() {
            let error = format!(
                "event {} `{}` cannot be decoded by the store: {why}; fix or remove it, then skip it with `reset`",
                event.id, event.name
            );
            let reaction = pending.reactions.first().map(String::as_str);
            let attempt = lease.retries + 1;
            done.stop(
                Settlement::block(&lease, acked, error),
                reaction,
                event.id,
                attempt,
            );
            return done;
        }
        // The stored retry count belongs to the first pending event only.
        let first = i == 0;
        let attempt = if first { lease.retries + 1 } else { 1 };
        let reactions = match reactions_of(&act, &lease.stream, pending) {
            Ok(r) => r,
            // Claim never hands out work for a reaction this broker lacks;
            // if it did, stop here rather than ack what did not run.
            Err(missing) => {
                tracing::warn!(queue = %lease.stream, event = event.id, reaction = %missing,
                    "batch holds work for a reaction this broker does not have; stopping before it");
                break;
            }
        };
        for reaction in reactions {
            let opts = reaction.options();
            if first && lease.lapses > 0 && lease.retries > opts.max_retries {
                let error = format!(
                    "reaction `{}` on event {} `{}`: the lease expired {} times without a settlement \
                     (the process crashed or the handler overran its lease); {} failed attempts in all",
                    reaction.name(),
                    event.id,
                    event.name,
                    lease.lapses,
                    lease.retries
                );
                match spent(opts.exhausted, &lease, acked, error) {
                    Some(block) => {
                        done.stop(block, Some(reaction.name()), event.id, attempt);
                        return done;
                    }
                    None => {
                        done.skipped += 1;
                        done.tally(reaction.name()).skipped += 1;
                        continue;
                    }
                }
            }
            let span = tracing::debug_span!(
                "act.handle",
                queue = %lease.stream,
                reaction = reaction.name(),
                event = event.id,
                attempt,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                parent = tracing::field::Empty,
            );
            let trace = crate::trace::enter(&**act.trace_propagator(), event.meta.trace(), &span);
            let ctx = Context::new(
                act.clone(),
                &lease.stream,
                reaction.name(),
                event.clone(),
                attempt,
                lease_lost.clone(),
                shutdown.clone(),
                trace,
                clock,
                (&lease, committed.clone()),
            );
            metrics::commit_to_handler(&reaction, event);
            let started = std::time::Instant::now();
            let result = call(&reaction, event.clone(), ctx).instrument(span).await;
            metrics::handler_duration(&reaction, started.elapsed());
            lease.position = lease
                .position
                .max(committed.load(std::sync::atomic::Ordering::SeqCst));
            let Err(failure) = result else {
                done.reactions += 1;
                done.tally(reaction.name()).delivered += 1;
                continue;
            };
            if let Some(deferral) = failure.defer {
                done.tally(reaction.name()).deferrals += 1;
                let delay = deferral.delay(clock.now());
                done.stop(
                    Settlement::defer(&lease, acked, delay),
                    Some(reaction.name()),
                    event.id,
                    attempt,
                );
                return done;
            }
            let tally = done.tally(reaction.name());
            tally.failures += 1;
            if failure.timed_out {
                tally.timeouts += 1;
                done.timeouts += 1;
            }
            let error = format!(
                "reaction `{}` failed on event {} `{}` (attempt {attempt}): {}",
                reaction.name(),
                event.id,
                event.name,
                failure.message
            );
            let retries = retries_after_failure(acked.is_some(), lease.retries);
            if failure.permanent {
                done.stop(
                    Settlement::block(&lease, acked, error),
                    Some(reaction.name()),
                    event.id,
                    attempt,
                );
                return done;
            }
            // A store that is briefly unreachable is not the handler's fault:
            // retry with backoff for as long as it takes, never block.
            if retries > opts.max_retries && !failure.store_unavailable {
                match spent(opts.exhausted, &lease, acked, error) {
                    Some(block) => {
                        done.stop(block, Some(reaction.name()), event.id, attempt);
                        return done;
                    }
                    None => {
                        done.skipped += 1;
                        done.tally(reaction.name()).skipped += 1;
                        continue;
                    }
                }
            }
            let delay = opts.backoff.delay(retries);
            let retry = Settlement::retry(&lease, acked, delay, error);
            done.stop(retry, Some(reaction.name()), event.id, attempt);
            return done;
        }
        acked = Some(event.id);
        done.events += 1;
        done.settlement = Some(Settlement::ack(&lease, event.id));
    }
    done
}

/// What a reaction whose retries ran out does: block the queue at the event
/// (the settlement to write) or, with [`Exhausted::Skip`], skip the event
/// with a warning (`None`).
fn spent(
    exhausted: Exhausted,
    lease: &Lease,
    acked: Option<i64>,
    error: String,
) -> Option<Settlement> {
    match exhausted {
        Exhausted::Block => Some(Settlement::block(lease, acked, error)),
        Exhausted::Skip => {
            tracing::warn!(queue = %lease.stream, %error, "retries exhausted, skipping the event");
            None
        }
    }
}

/// The reactions to run for one pending event: those its items name, in
/// registration order (the same on every backend), or (an item of a
/// schema-1 store, which names none)
/// every reaction to the event's name whose resolver targets the queue.
fn reactions_of(
    act: &Act,
    stream: &str,
    pending: &crate::queue::Pending,
) -> Result<Vec<Arc<Reaction>>, String> {
    let registry = act.registry();
    if pending.reactions.is_empty() {
        return Ok(registry
            .for_event(&pending.event.name)
            .iter()
            .filter(|r| r.resolver().targets(&pending.event, stream))
            .cloned()
            .collect());
    }
    let mut out = Vec::with_capacity(pending.reactions.len());
    for name in &pending.reactions {
        match registry.get(name) {
            Some(r) => out.push(r.clone()),
            None => return Err(name.clone()),
        }
    }
    out.sort_by_key(|r| registry.position(r.name()));
    Ok(out)
}

fn invalid_target_error(act: &Act, reaction: &str, event: &Event) -> String {
    let target = act
        .registry()
        .get(reaction)
        .map(|r| crate::broker::correlate::resolve_caught(r, event));
    let why = match target {
        Some(Ok(Some(t))) => crate::limits::check_name("the queue name", &t)
            .err()
            .map_or_else(|| format!("it now resolves to `{t}`, a valid name: reset this queue past the event and replay `{t}`"), |e| e.to_string()),
        Some(Ok(None)) => "the resolver no longer targets a queue for it".to_string(),
        Some(Err(panic)) => panic,
        None => "this broker does not have the reaction".to_string(),
    };
    format!(
        "reaction `{reaction}` could not route event {} `{}` to a queue a store accepts ({why}); \
         fix the resolver (or the event), then skip this queue past the event with `reset`",
        event.id, event.name
    )
}

struct Failure {
    message: String,
    permanent: bool,
    /// Not a failure: the handler asked to be called again later.
    defer: Option<crate::reaction::Deferral>,
    /// The handler failed because the store was unavailable.
    store_unavailable: bool,
    timed_out: bool,
}

/// The window of a batch reaction that starts at `i`: the events from `i`
/// on whose items name that one reaction only (at least two), and the index
/// past the last of them.
fn window(act: &Act, events: &[crate::queue::Pending], i: usize) -> Option<(Arc<Reaction>, usize)> {
    let only = |p: &crate::queue::Pending| match p.reactions.as_slice() {
        [name] if p.event.undecodable_error().is_none() => Some(name.clone()),
        _ => None,
    };
    let name = only(&events[i])?;
    let reaction = act.registry().get(&name).filter(|r| r.is_batch())?.clone();
    let end = i + events[i..]
        .iter()
        .take_while(|p| only(p).as_deref() == Some(name.as_str()))
        .count();
    (end - i >= 2).then_some((reaction, end))
}

async fn call(reaction: &Reaction, event: Arc<Event>, ctx: Context) -> Result<(), Failure> {
    let cancel = ctx.timeout_token();
    guarded(reaction, cancel, reaction.call(event, ctx)).await
}

/// Runs a handler future under its reaction's timeout, catching panics.
async fn guarded(
    reaction: &Reaction,
    cancel: CancellationToken,
    fut: crate::reaction::HandlerFuture,
) -> Result<(), Failure> {
    let timeout = reaction.options().timeout;
    let mut fut = AssertUnwindSafe(fut).catch_unwind();
    let outcome = match timeout {
        None => fut.await,
        Some(limit) => {
            tokio::select! {
                r = &mut fut => r,
                _ = tokio::time::sleep(limit) => {
                    // Tell the handler first (its spawned work may watch the
                    // context), then drop its future.
                    cancel.cancel();
                    drop(fut);
                    return Err(Failure {
                        message: format!("timed out after {limit:?} and was cancelled"),
                        permanent: false,
                        defer: None,
                        store_unavailable: false,
                        timed_out: true,
                    });
                }
            }
        }
    };
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure {
            message: e.to_string(),
            permanent: e.is_permanent(),
            defer: e.deferral(),
            store_unavailable: e
                .error()
                .downcast_ref::<crate::Error>()
                .is_some_and(crate::Error::is_transient),
            timed_out: false,
        }),
        Err(panic) => Err(Failure {
            message: format!("handler panicked: {}", panic_message(&*panic)),
            permanent: false,
            defer: None,
            store_unavailable: false,
            timed_out: false,
        }),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
