//! Runs one claimed batch: the queue's events in id order, each through every
//! reaction that targets this queue, stopping at the first failure.
//!
//! The result is a [`Settlement`] the broker writes back: an ack up to the last
//! event that succeeded, or a retry/block that keeps that partial progress.
//! Panics are caught and treated as failures.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::app::Act;
use crate::context::Context;
use crate::event::Event;
use crate::queue::{retries_after_failure, Batch, Lease, Settlement};
use crate::reaction::{Exhausted, Reaction};

/// What a batch did, for the broker's counters and its settle call.
#[derive(Debug)]
pub(crate) struct Finished {
    pub lease: Lease,
    pub settlement: Settlement,
    /// Events that fully succeeded (or were skipped after exhausting retries).
    pub events: u64,
    /// Successful handler calls.
    pub reactions: u64,
    /// Exhausted reactions that were skipped (`Exhausted::Skip`).
    pub skipped: u64,
}

/// Processes `batch` in order. Stops before the next event once `lease_lost`
/// or `shutdown` fires.
pub(crate) async fn run(
    act: Act,
    batch: Batch,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
) -> Finished {
    let Batch { lease, events } = batch;
    let mut to = lease.position;
    let mut done = Finished {
        settlement: Settlement::ack(&lease, to),
        lease: lease.clone(),
        events: 0,
        reactions: 0,
        skipped: 0,
    };
    for (i, event) in events.iter().enumerate() {
        if lease_lost.is_cancelled() || shutdown.is_cancelled() {
            break;
        }
        // The stored retry count belongs to the first pending event only.
        let attempt = if i == 0 { lease.retries + 1 } else { 1 };
        for reaction in act.registry().for_event(&event.name) {
            if !reaction.resolver().targets(event, &lease.stream) {
                continue;
            }
            let ctx = Context::new(
                act.clone(),
                &lease.stream,
                reaction.name(),
                event.clone(),
                attempt,
                lease_lost.clone(),
                shutdown.clone(),
            );
            let Err(failure) = call(reaction, event.clone(), ctx).await else {
                done.reactions += 1;
                continue;
            };
            let error = format!(
                "reaction `{}` failed on event {} `{}` (attempt {attempt}): {}",
                reaction.name(),
                event.id,
                event.name,
                failure.message
            );
            let opts = reaction.options();
            let retries = retries_after_failure(lease.position, to, lease.retries);
            if failure.permanent {
                done.settlement = Settlement::block(&lease, to, error);
                return done;
            }
            // A store that is briefly unreachable is not the handler's fault:
            // retry with backoff for as long as it takes, never block.
            if retries > opts.max_retries && !failure.store_unavailable {
                match opts.exhausted {
                    Exhausted::Block => {
                        done.settlement = Settlement::block(&lease, to, error);
                        return done;
                    }
                    Exhausted::Skip => {
                        tracing::warn!(queue = %lease.stream, %error, "retries exhausted, skipping the event");
                        done.skipped += 1;
                        continue;
                    }
                }
            }
            let delay = opts.backoff.delay(retries);
            done.settlement = Settlement::retry(&lease, to, delay, error);
            return done;
        }
        to = event.id;
        done.events += 1;
        done.settlement = Settlement::ack(&lease, to);
    }
    done
}

struct Failure {
    message: String,
    permanent: bool,
    /// The handler failed because the store was unavailable.
    store_unavailable: bool,
}

async fn call(reaction: &Reaction, event: Arc<Event>, ctx: Context) -> Result<(), Failure> {
    match AssertUnwindSafe(reaction.call(event, ctx))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure {
            message: e.to_string(),
            permanent: e.is_permanent(),
            store_unavailable: e
                .error()
                .downcast_ref::<crate::Error>()
                .is_some_and(crate::Error::is_transient),
        }),
        Err(panic) => Err(Failure {
            message: format!("handler panicked: {}", panic_message(&*panic)),
            permanent: false,
            store_unavailable: false,
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
