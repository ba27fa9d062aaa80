//! The broker's loop: correlate → claim → dispatch → settle, driven by store
//! wake-ups, finished batches, renewal deadlines and a fallback poll.
//!
//! The loop owns every task it spawns (a `JoinSet`); nothing outlives it.
//! Store failures are logged, counted and retried with a growing pause; in the
//! one-shot modes they end the run after a bounded number of attempts so a
//! caller is never left waiting on a store that is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::{self, Finished};
use super::{BrokerOptions, Counters};
use crate::app::Act;
use crate::error::{Error, Result};
use crate::query::Query;
use crate::queue::{Claim, LeaseRef, Outcome, Work};

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// When nothing is due now.
    Settle,
    /// When every queue is caught up or blocked.
    CatchUp,
    /// At shutdown.
    Forever,
}

/// Consecutive store failures a one-shot run tolerates before it gives up.
const ONE_SHOT_FAILURES: u32 = 12;

/// How soon a one-shot run looks again for committed events the store does
/// not show followers yet.
const HIDDEN_RECHECK: Duration = Duration::from_millis(5);

/// How long `settle` waits for such events before it returns (`catch_up`
/// waits until they are delivered).
const SETTLE_HIDDEN_PATIENCE: Duration = Duration::from_secs(1);

/// How long a broker that lost a correlation race leaves
/// correlation to the winner before trying again. Every broker reads and
/// decodes the events it correlates; when all of them do it on every wake-up,
/// all but one of them wait for the checkpoint and throw their reads away,
/// and more brokers deliver less. If the winner stops, another broker takes
/// over within this time.
const FOLLOW: Duration = Duration::from_millis(100);

struct Running {
    lease: LeaseRef,
    lost: CancellationToken,
    renewed: Instant,
}

pub(crate) struct Runner {
    act: Act,
    opts: BrokerOptions,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    checkpoint: Option<i64>,
    /// Set when this broker lost a correlation race: correlation waits until
    /// then.
    follow_until: Option<Instant>,
    tasks: JoinSet<Finished>,
    running: HashMap<Id, Running>,
    done: Vec<Finished>,
    orphans: Vec<LeaseRef>,
    failures: u32,
}

impl Runner {
    pub(crate) fn new(
        act: Act,
        opts: BrokerOptions,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> Self {
        Runner {
            act,
            opts,
            counters,
            shutdown,
            checkpoint: None,
            follow_until: None,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            done: Vec::new(),
            orphans: Vec::new(),
            failures: 0,
        }
    }

    pub(crate) async fn run(mut self, mode: Mode) -> Result<()> {
        let store = self.act.store().clone();
        let mut wake = store.wake();
        wake.borrow_and_update();
        let mut wake_open = true;
        let mut correlate = true;
        let mut claim = true;
        let mut stopping = false;
        let mut grace_end: Option<Instant> = None;
        let mut due_at: Option<Instant> = None;
        let mut hidden_since: Option<Instant> = None;
        let mut next_poll = Instant::now() + self.opts.poll;

        loop {
            let mut failed = false;
            while let Some(res) = self.tasks.try_join_next_with_id() {
                self.finished(res);
            }
            if !self.done.is_empty() || !self.orphans.is_empty() {
                match self.flush().await {
                    Ok(()) => claim = true,
                    Err(e) => failed = self.fail("settle", e, mode)?,
                }
            }
            let following = self.follow_until.is_some_and(|t| Instant::now() < t);
            if correlate && !stopping && !failed && !following {
                match self.correlate().await {
                    Ok(lost) => {
                        correlate = false;
                        claim = true;
                        // A run never counts itself quiet while following:
                        // `correlate` stays set until it has looked again.
                        self.follow_until = lost.then(|| Instant::now() + FOLLOW);
                    }
                    Err(e) => failed = self.fail("correlate", e, mode)?,
                }
            }
            if !failed {
                if let Err(e) = self.renew().await {
                    failed = self.fail("renew", e, mode)?;
                }
            }
            if claim && !stopping && !failed && self.running.len() < self.opts.concurrency {
                match self.claim().await {
                    Ok(full) => claim = full,
                    Err(e) => failed = self.fail("claim", e, mode)?,
                }
            }
            if !failed {
                self.failures = 0;
            }

            if stopping
                && self.running.is_empty()
                && self.done.is_empty()
                && self.orphans.is_empty()
            {
                return Ok(());
            }
            let woken = wake_open && wake.has_changed().unwrap_or(false);
            // Quiet: nothing running, nothing to write back, correlation and
            // claim found nothing. A pending wake-up alone does not make the
            // run busy when the store is only re-waking us for hidden events.
            let quiet =
                self.running.is_empty() && self.done.is_empty() && !correlate && !claim && !failed;
            if !quiet {
                hidden_since = None;
            }
            if quiet && !stopping && mode != Mode::Forever {
                // Committed events a store cannot show followers yet (on
                // PostgreSQL: behind a transaction still running) are work
                // too: look again shortly.
                match store.head().await {
                    Ok(head) if head > self.checkpoint.unwrap_or(0) => {
                        let since = *hidden_since.get_or_insert_with(Instant::now);
                        let waited = since.elapsed();
                        if mode == Mode::Settle && waited >= SETTLE_HIDDEN_PATIENCE {
                            return Ok(());
                        }
                        if waited >= Duration::from_secs(1)
                            && waited.as_millis() % 1000 < HIDDEN_RECHECK.as_millis()
                        {
                            tracing::info!(head, checkpoint = ?self.checkpoint, ?waited,
                                "waiting for committed events hidden behind running transactions");
                        }
                        correlate = true;
                        due_at = Some(Instant::now() + HIDDEN_RECHECK);
                    }
                    Ok(_) if woken => {}
                    Ok(_) => match mode {
                        Mode::CatchUp => match store.next_due().await {
                            Ok(None) => return Ok(()),
                            Ok(Some(d)) => {
                                due_at = Some(Instant::now() + d.max(Duration::from_millis(1)))
                            }
                            Err(e) => failed = self.fail("next_due", e, mode)?,
                        },
                        _ => return Ok(()),
                    },
                    Err(e) => failed = self.fail("head", e, mode)?,
                }
            }

            let now = Instant::now();
            let mut deadline = next_poll;
            if let Some(t) = self.next_renewal() {
                deadline = deadline.min(t);
            }
            if let Some(t) = grace_end {
                deadline = deadline.min(t);
            }
            if let Some(t) = due_at {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.follow_until.filter(|_| correlate) {
                deadline = deadline.min(t);
            }
            if failed {
                deadline = deadline.min(now + self.pause());
            }

            tokio::select! {
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    grace_end = Some(Instant::now() + self.opts.grace);
                }
                Some(res) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finished(res);
                }
                changed = wake.changed(), if wake_open => {
                    if changed.is_ok() {
                        correlate = true;
                        claim = true;
                    } else {
                        wake_open = false;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if now >= next_poll || failed {
                        correlate = true;
                        claim = true;
                        next_poll = now + self.opts.poll;
                    }
                    if due_at.is_some_and(|t| now >= t) {
                        due_at = None;
                        claim = true;
                    }
                    if grace_end.is_some_and(|t| now >= t) {
                        grace_end = None;
                        self.abort_all().await;
                    }
                }
            }
        }
    }

    /// Counts and logs a store failure; ends a one-shot run when the failure
    /// is not transient or has lasted too long. Returns `true` (failed).
    fn fail(&mut self, what: &str, e: Error, mode: Mode) -> Result<bool> {
        self.failures += 1;
        Counters::add(&self.counters.errors, 1);
        tracing::warn!(step = what, failures = self.failures, error = %e, "broker store call failed; retrying");
        if mode != Mode::Forever && (!e.is_transient() || self.failures >= ONE_SHOT_FAILURES) {
            return Err(e);
        }
        Ok(true)
    }

    fn pause(&self) -> Duration {
        let ms = 10u64.saturating_mul(1 << self.failures.min(10));
        Duration::from_millis(ms.min(2_000))
    }

    fn finished(&mut self, res: Result<(Id, Finished), JoinError>) {
        match res {
            Ok((id, f)) => {
                self.running.remove(&id);
                self.done.push(f);
            }
            Err(e) => {
                if let Some(r) = self.running.remove(&e.id()) {
                    if e.is_panic() {
                        tracing::error!(queue = %r.lease.stream, error = %e, "a queue task failed outside its handlers; releasing its lease");
                    }
                    self.orphans.push(r.lease);
                }
            }
        }
    }

    async fn abort_all(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        tracing::warn!(
            queues = self.tasks.len(),
            "shutdown grace period over: aborting in-flight batches; their events will be delivered again"
        );
        self.tasks.abort_all();
        while let Some(res) = self.tasks.join_next_with_id().await {
            self.finished(res);
        }
    }

    /// Routes new events to queues; true when another broker moved the
    /// checkpoint first (this broker's last read was wasted).
    async fn correlate(&mut self) -> Result<bool> {
        let store = self.act.store().clone();
        let mut cp = match self.checkpoint {
            Some(c) => c,
            None => store.checkpoint().await?,
        };
        let batch = self.opts.correlate_batch.max(1);
        let mut lost = false;
        loop {
            let events = store.query(&Query::new().after(cp).limit(batch)).await?;
            let Some(last) = events.last() else { break };
            let to = last.id;
            let mut work: Vec<Work> = Vec::new();
            for e in &events {
                let first = work.len();
                for r in self.act.registry().for_event(&e.name) {
                    let Some(stream) = r.resolver().resolve(e) else {
                        continue;
                    };
                    let priority = r.options().priority;
                    match work[first..].iter_mut().find(|w| w.stream == stream) {
                        Some(w) => w.priority = w.priority.max(priority),
                        None => work.push(Work {
                            stream,
                            event: e.id,
                            priority,
                        }),
                    }
                }
            }
            let after = store.enqueue(&work, cp, to).await?;
            lost = after != to;
            if after == to {
                Counters::add(&self.counters.correlated, events.len() as u64);
            }
            if after <= cp {
                // The store reports no progress past what we read: nothing
                // more to do until the next wake-up.
                break;
            }
            cp = after;
            if events.len() < batch {
                break;
            }
        }
        self.checkpoint = Some(cp);
        Ok(lost)
    }

    /// Claims up to the free slots; true when every slot was filled (more may
    /// be waiting).
    async fn claim(&mut self) -> Result<bool> {
        let free = self.opts.concurrency.saturating_sub(self.running.len());
        if free == 0 {
            return Ok(true);
        }
        let started = Instant::now();
        let batches = self
            .act
            .store()
            .claim(&Claim {
                owner: self.opts.owner.clone(),
                queues: free,
                events: self.opts.batch,
                lease: self.opts.lease,
            })
            .await?;
        let full = batches.len() == free;
        Counters::add(&self.counters.claims, batches.len() as u64);
        for b in batches {
            let lost = CancellationToken::new();
            let lease = b.lease.reference();
            let task = dispatch::run(self.act.clone(), b, lost.clone(), self.shutdown.clone());
            let handle = self.tasks.spawn(task);
            self.running.insert(
                handle.id(),
                Running {
                    lease,
                    lost,
                    renewed: started,
                },
            );
        }
        Ok(full)
    }

    async fn flush(&mut self) -> Result<()> {
        let store = self.act.store().clone();
        if !self.done.is_empty() {
            let settlements: Vec<_> = self.done.iter().map(|f| f.settlement.clone()).collect();
            let results = store.settle(&settlements).await?;
            for (f, r) in self.done.drain(..).zip(results) {
                Counters::add(&self.counters.reactions, f.reactions);
                match r {
                    Ok(()) => {
                        Counters::add(&self.counters.events, f.events);
                        Counters::add(&self.counters.skipped, f.skipped);
                        match &f.settlement.outcome {
                            Outcome::Ack => {}
                            Outcome::Retry { delay, error } => {
                                Counters::add(&self.counters.retries, 1);
                                tracing::debug!(queue = %f.lease.stream, ?delay, %error, "retry scheduled");
                            }
                            Outcome::Block { error } => {
                                Counters::add(&self.counters.blocked, 1);
                                tracing::warn!(queue = %f.lease.stream, %error, "queue blocked");
                            }
                        }
                    }
                    Err(rejection) => {
                        Counters::add(&self.counters.rejected, 1);
                        tracing::warn!(queue = %f.lease.stream, %rejection,
                            "settlement rejected: the lease was lost; the batch will be delivered again by its new owner");
                    }
                }
            }
        }
        if !self.orphans.is_empty() {
            let results = store.release(&self.orphans).await?;
            for (lease, r) in self.orphans.drain(..).zip(results) {
                if let Err(rejection) = r {
                    Counters::add(&self.counters.rejected, 1);
                    tracing::warn!(queue = %lease.stream, %rejection, "release rejected");
                }
            }
        }
        Ok(())
    }

    fn next_renewal(&self) -> Option<Instant> {
        let period = self.opts.renew_period();
        self.running
            .values()
            .filter(|r| !r.lost.is_cancelled())
            .map(|r| r.renewed + period)
            .min()
    }

    async fn renew(&mut self) -> Result<()> {
        let period = self.opts.renew_period();
        let now = Instant::now();
        let due: Vec<(Id, LeaseRef)> = self
            .running
            .iter()
            .filter(|(_, r)| !r.lost.is_cancelled() && now.duration_since(r.renewed) >= period)
            .map(|(id, r)| (*id, r.lease.clone()))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let refs: Vec<LeaseRef> = due.iter().map(|(_, l)| l.clone()).collect();
        match self.act.store().renew(&refs, self.opts.lease).await {
            Ok(results) => {
                for ((id, lease), r) in due.into_iter().zip(results) {
                    let Some(run) = self.running.get_mut(&id) else {
                        continue;
                    };
                    match r {
                        Ok(_) => run.renewed = now,
                        Err(rejection) => {
                            run.lost.cancel();
                            Counters::add(&self.counters.lost, 1);
                            tracing::warn!(queue = %lease.stream, %rejection, "lease lost; telling the handler to stop");
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Past the lease length without a renewal, the lease has
                // expired on any sane clock: tell the handlers.
                for (id, lease) in &due {
                    if let Some(run) = self.running.get(id) {
                        if now.duration_since(run.renewed) >= self.opts.lease
                            && !run.lost.is_cancelled()
                        {
                            run.lost.cancel();
                            Counters::add(&self.counters.lost, 1);
                            tracing::warn!(queue = %lease.stream, "lease could not be renewed in time; telling the handler to stop");
                        }
                    }
                }
                Err(e)
            }
        }
    }
}
