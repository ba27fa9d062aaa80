//! The broker's loop. Each pass does, in order: write back finished batches
//! (settle, release), register the reactions (at start and every heartbeat),
//! take a finished backfill step in, correlate the live group, start the
//! next backfill step, renew leases, claim. The first store call that fails
//! ends the pass; then the loop waits.
//!
//! How long it waits is decided in one place, [`Runner::deadline`]: after a
//! failure, the [`Pacer`]'s pause and nothing else (no wake-up, finished
//! batch or renewal deadline cuts it short; only shutdown does); otherwise
//! the earliest of the fallback poll, a lease renewal, a scheduled retry, a
//! followed cursor, the heartbeat and the shutdown grace period, or sooner
//! a wake-up or a finished batch.
//!
//! The loop owns every task it spawns (`JoinSet`s); nothing outlives it.
//! In the one-shot modes a failure that is not transient, or that has lasted
//! [`ONE_SHOT_FAILURES`] passes, ends the run with the error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::correlate::{self, Progress, Stepped};
use super::dispatch::{self, Finished};
use super::observe::{BrokerEvent, Observer};
use super::pacer::Pacer;
use super::{BrokerOptions, Counters};
use crate::app::Act;
use crate::error::{Error, Result};
use crate::metrics;
use crate::queue::{Claim, LeaseRef, Outcome};

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// When nothing is due now (`run_once`).
    Once,
    /// When every queue is caught up or blocked (`settle`).
    Settle,
    /// At shutdown.
    Forever,
}

/// Consecutive failed passes a one-shot run tolerates before it gives up.
const ONE_SHOT_FAILURES: u32 = 12;

/// Most next-attempt times a broker keeps to claim at (see
/// `Runner::due_hints`).
const DUE_HINTS: usize = 100_000;

/// How soon a one-shot run looks again for committed events the store does
/// not show followers yet.
const HIDDEN_RECHECK: Duration = Duration::from_millis(5);

/// How long `run_once` waits for such events before it returns (`settle`
/// waits until they are delivered).
const SETTLE_HIDDEN_PATIENCE: Duration = Duration::from_secs(1);

/// How often a quiet one-shot run that follows another broker's live
/// cursor asks the store where it is ([`Runner::finish_following`]).
const FOLLOW_CHECK: Duration = Duration::from_millis(5);

struct Running {
    lease: LeaseRef,
    lost: CancellationToken,
    renewed: Instant,
}

/// What the next pass should look at.
struct Want {
    /// New events may be in the log.
    correlate: bool,
    /// Queues may be claimable.
    claim: bool,
}

type Failed = (&'static str, Error);

pub(crate) struct Runner {
    act: Act,
    opts: BrokerOptions,
    counters: Arc<Counters>,
    observer: Arc<Observer>,
    shutdown: CancellationToken,
    /// Leases claimed and not yet settled or released (the
    /// `act_leases_held` gauge's share of this run).
    held: usize,
    progress: Progress,
    registered: Option<Instant>,
    tasks: JoinSet<Finished>,
    running: HashMap<Id, Running>,
    done: Vec<Finished>,
    orphans: Vec<LeaseRef>,
    /// A queue walking through a batch whose lease ended without a
    /// settlement ([`crate::Lease::suspect`]: its handler may crash the
    /// process): it runs alone, once every other batch of this broker is
    /// done, so a crash costs no other queue an attempt. Its task and the
    /// gate that starts it.
    suspect: Option<(Id, Option<tokio::sync::oneshot::Sender<()>>)>,
    /// The last claim found a suspect: claim one queue at a time.
    walking: bool,
    /// At most one backfill or replay step in flight.
    backfill: JoinSet<Result<Stepped>>,
    stepped: Option<Result<Stepped>>,
    pacer: Pacer,
    /// Next attempts this broker knows of (retries and deferrals it
    /// settled, the store's next due queue when it registered), earliest
    /// first: it claims at each, not only at the next poll, so deferred
    /// events and timers are taken up on time. Bounded: past
    /// [`DUE_HINTS`] new ones are not kept (the poll finds them).
    due_hints: std::collections::BinaryHeap<std::cmp::Reverse<Instant>>,
    /// When a quiet one-shot run last asked where the broker it follows is.
    follow_checked: Option<Instant>,
}

impl Runner {
    pub(crate) fn new(
        act: Act,
        opts: BrokerOptions,
        counters: Arc<Counters>,
        observer: Arc<Observer>,
        shutdown: CancellationToken,
    ) -> Self {
        let pacer = Pacer::new(opts.store_backoff);
        Runner {
            act,
            opts,
            counters,
            observer,
            shutdown,
            held: 0,
            progress: Progress::default(),
            registered: None,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            done: Vec::new(),
            orphans: Vec::new(),
            suspect: None,
            walking: false,
            backfill: JoinSet::new(),
            stepped: None,
            pacer,
            due_hints: std::collections::BinaryHeap::new(),
            follow_checked: None,
        }
    }

    pub(crate) async fn run(mut self, mode: Mode) -> Result<()> {
        crate::metrics::zero(self.act.registry().reactions().iter().map(|r| r.name()));
        let store = self.act.store().clone();
        let mut wake = store.wake();
        let mut seen = *wake.borrow_and_update();
        let mut wake_open = true;
        let mut want = Want {
            correlate: true,
            claim: true,
        };
        let mut stopping = false;
        let mut grace_end: Option<Instant> = None;
        let mut due_at: Option<Instant> = None;
        let mut hidden_since: Option<Instant> = None;
        let mut next_poll = Instant::now() + self.opts.poll;

        loop {
            self.reap();
            let failed = match self.pass(&mut want, stopping).await {
                Ok(()) => {
                    self.pacer.succeeded();
                    None
                }
                Err((step, e)) => {
                    self.store_failed(step, &e);
                    let unregistered = self.registered.is_none() && !e.is_transient();
                    let give_up = mode != Mode::Forever
                        && (!e.is_transient() || self.pacer.failures() >= ONE_SHOT_FAILURES);
                    let abandoned = stopping && grace_end.is_none();
                    if unregistered || give_up {
                        self.abort_all().await;
                        return Err(e);
                    }
                    if abandoned {
                        tracing::warn!(error = %e, "shutting down while the store is unreachable: \
                            leases not released expire on the store's clock");
                        return Err(e);
                    }
                    Some(e)
                }
            };

            self.observe_turn(failed.is_none(), &want);
            if stopping && self.idle() {
                return Ok(());
            }
            // Left to another broker, the live cursor is no work of this
            // one's: a one-shot run can be quiet meanwhile (`finish` asks
            // where the other broker is).
            let quiet = failed.is_none()
                && self.idle()
                && !want.claim
                && (!want.correlate || self.progress.following_live(Instant::now()));
            if !quiet {
                hidden_since = None;
            }
            if quiet && !stopping && mode != Mode::Forever && !self.progress.behind() {
                match self.finish(mode, &mut hidden_since, want.correlate).await {
                    Ok(Some(wait)) => due_at = Some(Instant::now() + wait),
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        self.store_failed("finish", &e);
                        if !e.is_transient() || self.pacer.failures() >= ONE_SHOT_FAILURES {
                            return Err(e);
                        }
                    }
                }
                if hidden_since.is_some() {
                    want.correlate = true;
                }
            }

            let deadline = self.deadline(next_poll, grace_end, due_at);
            let pausing = self.pacer.pausing().is_some();
            let following = self.progress.follow_ends();
            tokio::select! {
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    grace_end = Some(Instant::now() + self.opts.grace);
                }
                Some(res) = self.tasks.join_next_with_id(), if !pausing && !self.tasks.is_empty() => {
                    self.finished(res);
                }
                Some(res) = self.backfill.join_next(), if !pausing && !self.backfill.is_empty() => {
                    self.stepped = Some(flatten(res));
                }
                changed = wake.changed(), if !pausing && wake_open => {
                    if changed.is_ok() {
                        // Only new events send the loop to the log: after
                        // a settle, a release or an enqueue it claims.
                        let now = *wake.borrow_and_update();
                        want.correlate |= now.has_events_since(&seen);
                        want.claim = true;
                        seen = now;
                    } else {
                        wake_open = false;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if now >= next_poll {
                        want.correlate = true;
                        want.claim = true;
                        next_poll = now + self.opts.poll;
                    }
                    if due_at.is_some_and(|t| now >= t) {
                        due_at = None;
                        want.claim = true;
                    }
                    while self.due_hints.peek().is_some_and(|t| now >= t.0) {
                        self.due_hints.pop();
                        want.claim = true;
                    }
                    if following.is_some_and(|t| now >= t) {
                        // A cursor left to another broker may be tried again.
                        want.correlate = true;
                    }
                    if grace_end.is_some_and(|t| now >= t) {
                        grace_end = None;
                        self.abort_all().await;
                    }
                    if failed.is_some() {
                        // The pause is over: try every concern again.
                        want.correlate = true;
                        want.claim = true;
                    }
                }
            }
        }
    }

    /// Counts a failed store call and starts the pause after it.
    fn store_failed(&mut self, step: &'static str, e: &Error) {
        Counters::add(&self.counters.errors, 1);
        metrics::count(metrics::STORE_ERRORS, 1);
        self.pacer.failed(step, e);
        let (failures, error) = (self.pacer.failures(), e.to_string());
        self.observer.update(|h| {
            h.store_ok = false;
            h.consecutive_store_failures = failures;
            h.last_store_error = Some(error);
        });
    }

    /// Records a completed loop turn for [`crate::Broker::health`].
    fn observe_turn(&self, ok: bool, want: &Want) {
        let work_due = !self.idle() || want.correlate || want.claim || self.progress.behind();
        let held = self.held;
        self.observer.update(|h| {
            let now = std::time::Instant::now();
            h.running = true;
            h.last_turn = now;
            if ok {
                h.last_progress = now;
                h.store_ok = true;
                h.consecutive_store_failures = 0;
                h.last_store_error = None;
            }
            h.work_due = work_due;
            h.leases_held = held;
        });
    }

    /// Moves this run's count of held leases and the process's gauge.
    fn hold(&mut self, delta: i64) {
        self.held = (self.held as i64 + delta).max(0) as usize;
        metrics::leases_held(delta);
    }

    /// One pass over the concerns; the first failed store call ends it.
    async fn pass(&mut self, want: &mut Want, stopping: bool) -> Result<(), Failed> {
        if let Some(claim) = self.claim_beside_settle(want, stopping) {
            return self.settle_and_claim(want, claim).await;
        }
        if !self.done.is_empty() || !self.orphans.is_empty() {
            self.flush().await.map_err(|e| ("settle", e))?;
            want.claim = true;
        }
        if !stopping && self.registration_due() {
            self.register().await.map_err(|e| ("register", e))?;
            want.correlate = true;
            want.claim = true;
            let mine = self.progress.reactions();
            if !mine.is_empty() {
                let due = self.act.store().next_due(&mine).await;
                if let Some(d) = due.map_err(|e| ("register", e))? {
                    self.hint_due(d);
                }
            }
        }
        if let Some(stepped) = self.stepped.take() {
            let s = stepped.map_err(|e| ("backfill", e))?;
            self.took(&s, true);
            want.claim |= s.items > 0;
        }
        if want.correlate && !stopping {
            let caught_up = self.correlate_live().await.map_err(|e| ("correlate", e))?;
            want.correlate = !caught_up;
            want.claim = true;
        }
        if !stopping {
            self.start_backfill();
        }
        self.release_suspect();
        self.renew().await.map_err(|e| ("renew", e))?;
        if want.claim
            && !stopping
            && self.suspect.is_none()
            && self.running.len() < self.opts.concurrency
        {
            want.claim = self.claim().await.map_err(|e| ("claim", e))?;
        }
        Ok(())
    }

    /// Starts the next backfill step when none is in flight.
    fn start_backfill(&mut self) {
        if self.backfill.is_empty() && self.stepped.is_none() {
            if let Some(job) = self.progress.next_backfill(Instant::now()) {
                let act = self.act.clone();
                let page = self.opts.backfill_batch;
                self.backfill
                    .spawn(async move { correlate::step(&act, job, page).await });
            }
        }
    }

    /// The claim to send in one call with the write-back of finished
    /// batches, when this pass would do nothing else between the two (no
    /// registration, backfill step, correlation, release or renewal due):
    /// the pass is then one round trip instead of two, and in the same
    /// order (the store claims after it settled).
    fn claim_beside_settle(&self, want: &Want, stopping: bool) -> Option<Claim> {
        let only_settlements = !self.done.is_empty()
            && self.orphans.is_empty()
            && self.done.iter().all(|f| f.settlement.is_some());
        let now = Instant::now();
        // Correlation left to another broker makes no store call.
        let nothing_between = !stopping
            && (!want.correlate || self.progress.following_live(now))
            && !self.registration_due()
            && self.stepped.is_none()
            && self.suspect.is_none()
            && self.next_renewal().is_none_or(|t| t > now);
        if !(only_settlements && nothing_between) {
            return None;
        }
        self.next_claim().ok()
    }

    /// Writes back every finished batch and claims in one store call (see
    /// [`Runner::claim_beside_settle`]). The claim's leases are taken up
    /// even when the settle failed, and the reverse.
    async fn settle_and_claim(&mut self, want: &mut Want, claim: Claim) -> Result<(), Failed> {
        self.start_backfill();
        let settlements = self.settlements();
        let started = Instant::now();
        let span = tracing::debug_span!(
            "act.claim",
            queues = claim.queues,
            settled = settlements.len(),
            claimed = tracing::field::Empty
        );
        let store = self.act.store().clone();
        let out = store
            .settle_and_claim(&settlements, &claim)
            .instrument(span.clone())
            .await;
        let settled = match out.settled {
            Ok(results) => {
                self.settled_all(results);
                Ok(())
            }
            Err(e) => Err(("settle", e)),
        };
        match out.claimed {
            Ok(batches) => {
                span.record("claimed", batches.len());
                // After a failed settle the claim did not run, or ran
                // beside it: claim again once the settle went through.
                want.claim = self.claimed(batches, claim.queues, started) || settled.is_err();
            }
            Err(e) => {
                want.claim = true;
                settled?;
                return Err(("claim", e));
            }
        }
        settled
    }

    /// Nothing running, nothing to write back, no backfill step in flight.
    fn idle(&self) -> bool {
        self.running.is_empty()
            && self.done.is_empty()
            && self.orphans.is_empty()
            && self.backfill.is_empty()
            && self.stepped.is_none()
    }

    /// The one place that decides how long the loop sleeps.
    fn deadline(
        &self,
        next_poll: Instant,
        grace_end: Option<Instant>,
        due_at: Option<Instant>,
    ) -> Instant {
        if let Some(pause) = self.pacer.pausing() {
            // After a failure only the pause counts (and the end of a
            // shutdown's grace period).
            return grace_end.map_or(pause, |g| g.min(pause));
        }
        [
            Some(next_poll),
            self.next_renewal(),
            grace_end,
            due_at,
            self.due_hints.peek().map(|t| t.0),
            self.progress.follow_ends(),
            self.registered
                .filter(|_| self.opts.heartbeat > Duration::ZERO)
                .map(|t| t + self.opts.heartbeat),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_poll)
    }

    /// A one-shot run is quiet: end it, or say how long to wait. Committed
    /// events the store cannot show followers yet (PostgreSQL: behind a
    /// transaction still running) are work too.
    async fn finish(
        &mut self,
        mode: Mode,
        hidden_since: &mut Option<Instant>,
        following: bool,
    ) -> Result<Option<Duration>> {
        if following {
            // Quiet with correlation still wanted: the live cursor was left
            // to another broker (even if that follow ended since).
            return self.finish_following().await;
        }
        let store = self.act.store().clone();
        let live = self.progress.live_checkpoint();
        let head = match live {
            Some(_) => store.head().await?,
            None => 0,
        };
        if live.is_some_and(|cp| head > cp) {
            let since = *hidden_since.get_or_insert_with(Instant::now);
            let waited = since.elapsed();
            if mode == Mode::Once && waited >= SETTLE_HIDDEN_PATIENCE {
                return Ok(None);
            }
            if waited >= Duration::from_secs(1)
                && waited.as_millis() % 1000 < HIDDEN_RECHECK.as_millis()
            {
                tracing::info!(head, checkpoint = ?live, ?waited,
                    "waiting for committed events hidden behind running transactions");
            }
            return Ok(Some(HIDDEN_RECHECK));
        }
        *hidden_since = None;
        let mine = self.progress.reactions();
        if mode == Mode::Once || mine.is_empty() {
            return Ok(None);
        }
        match store.next_due(&mine).await? {
            None => Ok(None),
            Some(d) => Ok(Some(d.max(Duration::from_millis(1)))),
        }
    }

    /// A quiet one-shot run that left the live cursor to another broker
    /// asks the store where that broker is (two small reads), instead of
    /// waiting out the follow: the winner may have correlated the whole log
    /// already, and a `settle` of several brokers used to end up to two
    /// follows (200 ms) after the work was done. Once the store's live
    /// checkpoint reaches the head, the run takes the cursor back and
    /// passes again at once (an empty read, a claim of what the winner
    /// enqueued last), then ends as any other. Otherwise it waits for a
    /// wake-up or the follow's end.
    ///
    /// It never ends the run itself, and asks at most once per
    /// [`FOLLOW_CHECK`] (every append wakes it).
    async fn finish_following(&mut self) -> Result<Option<Duration>> {
        let now = Instant::now();
        if let Some(next) = self.follow_checked.map(|t| t + FOLLOW_CHECK) {
            if next > now {
                return Ok(Some(next - now));
            }
        }
        self.follow_checked = Some(now);
        let store = self.act.store().clone();
        let head = store.head().await?;
        let states = store.subscriptions().await?;
        self.progress.adopt_live(&states);
        if self.progress.live_checkpoint().is_some_and(|cp| cp >= head) {
            self.progress.stop_following_live();
            return Ok(Some(Duration::ZERO));
        }
        // Not there yet: wait for a wake-up or the follow's end, after
        // which this broker takes the cursor back and correlates itself.
        let now = Instant::now();
        Ok(Some(
            self.progress
                .follow_ends()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
        ))
    }

    fn registration_due(&self) -> bool {
        match self.registered {
            None => true,
            Some(t) => self.opts.heartbeat > Duration::ZERO && t.elapsed() >= self.opts.heartbeat,
        }
    }

    /// Registers the reactions and learns where each one is.
    async fn register(&mut self) -> Result<()> {
        let states = self.act.register().await?;
        let replays = self.act.store().replays().await?;
        self.progress.learn(&self.act, &states, replays);
        self.registered = Some(Instant::now());
        Ok(())
    }

    /// Live correlation until caught up; true when it is (false while
    /// another broker is doing it or a page was full).
    ///
    /// A broker that lost the race and followed the winner for a while
    /// first asks where the cursor is (one small read): while the winner
    /// moves it, it goes on following instead of reading a page it would
    /// lose again.
    async fn correlate_live(&mut self) -> Result<bool> {
        loop {
            if self.progress.live_follow_over(Instant::now()) {
                let states = self.act.store().subscriptions().await?;
                if self.progress.followed_moved(&states) {
                    return Ok(false);
                }
            }
            let Some(job) = self.progress.live(Instant::now()) else {
                return Ok(self.progress.follow_ends().is_none());
            };
            let s = correlate::step(&self.act, job, self.opts.correlate_batch).await?;
            let lost = self.took(&s, false);
            if lost {
                return Ok(false);
            }
            if !s.full {
                return Ok(true);
            }
        }
    }

    /// Takes a step's result into the progress and the counters.
    fn took(&mut self, s: &Stepped, backfill: bool) -> bool {
        let behind = if backfill {
            s.job.reactions()
        } else {
            Vec::new()
        };
        let lost = self.progress.apply(s);
        if !lost && s.after.is_some() {
            let c = if backfill {
                &self.counters.backfilled
            } else {
                &self.counters.correlated
            };
            Counters::add(c, s.read as u64);
            if backfill {
                for r in &behind {
                    metrics::count_for(metrics::BACKFILLED, r, s.read as u64);
                }
            } else {
                metrics::count(metrics::EVENTS_CORRELATED, s.read as u64);
            }
        }
        if matches!(s.job, correlate::Job::Backfill { .. }) {
            for reaction in behind {
                if self.progress.is_live(&reaction) {
                    tracing::info!(%reaction, "backfill finished: the reaction is live");
                    self.observer
                        .send(BrokerEvent::BackfillFinished { reaction });
                }
            }
        }
        lost
    }

    fn reap(&mut self) {
        while let Some(res) = self.tasks.try_join_next_with_id() {
            self.finished(res);
        }
        if self.stepped.is_none() {
            if let Some(res) = self.backfill.try_join_next() {
                self.stepped = Some(flatten(res));
            }
        }
    }

    /// Starts the suspect once it is the only batch left running and the
    /// rest of its claim has been given back (a lease still held when the
    /// suspect crashes the process would lapse too).
    fn release_suspect(&mut self) {
        if let Some((id, gate)) = &mut self.suspect {
            if self.running.len() == 1 && self.running.contains_key(id) && self.orphans.is_empty() {
                if let Some(open) = gate.take() {
                    let _ = open.send(());
                }
            }
        }
    }

    fn finished(&mut self, res: Result<(Id, Finished), JoinError>) {
        let id = match &res {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if self.suspect.as_ref().is_some_and(|(s, _)| *s == id) {
            self.suspect = None;
        }
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
        self.backfill.abort_all();
        while self.backfill.join_next().await.is_some() {}
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

    /// Claims up to the free slots; true when every slot was filled (more may
    /// be waiting).
    async fn claim(&mut self) -> Result<bool> {
        let claim = match self.next_claim() {
            Ok(claim) => claim,
            Err(full) => return Ok(full),
        };
        let started = Instant::now();
        let span = tracing::debug_span!(
            "act.claim",
            queues = claim.queues,
            claimed = tracing::field::Empty
        );
        let batches = self
            .act
            .store()
            .claim(&claim)
            .instrument(span.clone())
            .await?;
        span.record("claimed", batches.len());
        Ok(self.claimed(batches, claim.queues, started))
    }

    /// The claim for the free slots, or, when there is nothing to ask for,
    /// whether the slots are full (more may be waiting).
    fn next_claim(&self) -> std::result::Result<Claim, bool> {
        // After a suspect, claim one queue at a time until a claim finds
        // none: the next suspect would make the rest of a bigger claim go
        // back again.
        let free = if self.walking {
            1.min(self.opts.concurrency.saturating_sub(self.running.len()))
        } else {
            self.opts.concurrency.saturating_sub(self.running.len())
        };
        let reactions = self.progress.reactions();
        if free == 0 || reactions.is_empty() {
            return Err(free == 0);
        }
        Ok(Claim {
            owner: self.opts.owner.clone(),
            queues: free,
            events: self.opts.batch,
            lease: self.opts.lease,
            reactions,
        })
    }

    /// Takes up claimed batches; true when they filled every slot asked
    /// for (more may be waiting).
    fn claimed(
        &mut self,
        batches: Vec<crate::queue::Batch>,
        free: usize,
        started: Instant,
    ) -> bool {
        let mut batches = batches;
        let full = batches.len() == free;
        Counters::add(&self.counters.claims, batches.len() as u64);
        metrics::count(metrics::CLAIMS, batches.len() as u64);
        self.hold(batches.len() as i64);
        self.walking = batches.iter().any(|b| b.lease.suspect);
        if let Some(i) = batches.iter().position(|b| b.lease.suspect) {
            // A lease of this queue ended without a settlement: its handler
            // may crash the process. It runs alone (the store hands it out
            // one event at a time until it is past that batch); the rest of
            // this claim goes back (a release is not a failed attempt).
            let suspect = batches.swap_remove(i);
            tracing::warn!(queue = %suspect.lease.stream, lapses = suspect.lease.lapses,
                retries = suspect.lease.retries,
                "a queue whose lease ended without a settlement runs alone, after this broker's other batches");
            self.orphans
                .extend(batches.iter().map(|b| b.lease.reference()));
            let (open, gate) = tokio::sync::oneshot::channel();
            let id = self.spawn(suspect, started, Some(gate));
            self.suspect = Some((id, Some(open)));
            self.release_suspect();
            return false;
        }
        for b in batches {
            self.spawn(b, started, None);
        }
        full
    }

    fn spawn(
        &mut self,
        b: crate::queue::Batch,
        started: Instant,
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Id {
        {
            let lost = CancellationToken::new();
            let lease = b.lease.reference();
            let clock = crate::context::StoreTime {
                at_claim: crate::clock::sub(b.lease.expires, self.opts.lease),
                since: std::time::Instant::now(),
            };
            let task = dispatch::run(
                self.act.clone(),
                b,
                clock,
                lost.clone(),
                self.shutdown.clone(),
                gate,
            );
            let handle = self.tasks.spawn(task);
            self.running.insert(
                handle.id(),
                Running {
                    lease,
                    lost,
                    renewed: started,
                },
            );
            handle.id()
        }
    }

    /// Writes back finished batches and gives orphaned leases back. A batch
    /// that stopped before its first event is released, not settled.
    async fn flush(&mut self) -> Result<()> {
        let store = self.act.store().clone();
        let (settle, release): (Vec<Finished>, Vec<Finished>) =
            self.done.drain(..).partition(|f| f.settlement.is_some());
        self.orphans
            .extend(release.iter().map(|f| f.lease.reference()));
        self.done = settle;
        if !self.done.is_empty() {
            let settlements = self.settlements();
            let results = store.settle(&settlements).await?;
            self.settled_all(results);
        }
        if !self.orphans.is_empty() {
            let results = store.release(&self.orphans).await?;
            self.hold(-(self.orphans.len() as i64));
            for (lease, r) in self.orphans.drain(..).zip(results) {
                if let Err(rejection) = r {
                    Counters::add(&self.counters.rejected, 1);
                    metrics::count(metrics::SETTLEMENTS_REJECTED, 1);
                    tracing::warn!(queue = %lease.stream, %rejection, "release rejected");
                    self.observer.send(BrokerEvent::SettlementRejected {
                        queue: lease.stream,
                        reason: rejection.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The write-backs of the finished batches that have one.
    fn settlements(&self) -> Vec<crate::queue::Settlement> {
        self.done
            .iter()
            .filter_map(|f| f.settlement.clone())
            .collect()
    }

    /// Takes up the settle's results for every finished batch.
    fn settled_all(&mut self, results: Vec<Result<(), crate::queue::Rejection>>) {
        self.hold(-(self.done.len() as i64));
        let done: Vec<Finished> = self.done.drain(..).collect();
        for (f, r) in done.into_iter().zip(results) {
            self.settled(f, r);
        }
    }

    /// Claims again after `delay` (unless [`DUE_HINTS`] are already kept:
    /// the poll finds that one).
    fn hint_due(&mut self, delay: Duration) {
        // A time past what the clock can hold (a deferral to the far
        // future) is left to the poll.
        if let Some(at) = Instant::now().checked_add(delay) {
            if self.due_hints.len() < DUE_HINTS {
                self.due_hints.push(std::cmp::Reverse(at));
            }
        }
    }

    /// Counts what a settled batch did, and tells of blocks, retries,
    /// deferrals and rejections.
    fn settled(&mut self, f: Finished, r: Result<(), crate::queue::Rejection>) {
        Counters::add(&self.counters.reactions, f.reactions);
        Counters::add(&self.counters.timeouts, f.timeouts);
        for t in &f.tallies {
            metrics::count_for(metrics::REACTIONS_DELIVERED, &t.reaction, t.delivered);
            metrics::count_for(metrics::HANDLER_FAILURES, &t.reaction, t.failures);
            metrics::count_for(metrics::HANDLER_TIMEOUTS, &t.reaction, t.timeouts);
            metrics::count_for(metrics::DEFERRALS, &t.reaction, t.deferrals);
        }
        if let Some(rejection) = r.err() {
            Counters::add(&self.counters.rejected, 1);
            metrics::count(metrics::SETTLEMENTS_REJECTED, 1);
            tracing::warn!(queue = %f.lease.stream, %rejection,
                "settlement rejected: the lease was lost; the batch will be delivered again by its new owner");
            self.observer.send(BrokerEvent::SettlementRejected {
                queue: f.lease.stream,
                reason: rejection.to_string(),
            });
            return;
        }
        Counters::add(&self.counters.events, f.events);
        Counters::add(&self.counters.skipped, f.skipped);
        metrics::count(metrics::EVENTS_ACKNOWLEDGED, f.events);
        for t in &f.tallies {
            metrics::count_for(metrics::SKIPS, &t.reaction, t.skipped);
        }
        let at = f.failed.clone();
        let reaction = at.as_ref().and_then(|a| a.reaction.clone());
        let label = reaction.as_deref().unwrap_or("");
        match f.settlement.map(|s| s.outcome) {
            Some(Outcome::Retry { delay, error }) => {
                self.hint_due(delay);
                Counters::add(&self.counters.retries, 1);
                metrics::count_for(metrics::RETRIES, label, 1);
                tracing::debug!(queue = %f.lease.stream, ?delay, %error, "retry scheduled");
                self.observer.send(BrokerEvent::RetryScheduled {
                    queue: f.lease.stream,
                    reaction,
                    event: at.as_ref().map_or(0, |a| a.event),
                    attempt: at.as_ref().map_or(1, |a| a.attempt),
                    delay,
                    error,
                });
            }
            Some(Outcome::Block { error }) => {
                Counters::add(&self.counters.blocked, 1);
                metrics::count_for(metrics::BLOCKS, label, 1);
                tracing::warn!(queue = %f.lease.stream, %error, "queue blocked");
                self.observer.send(BrokerEvent::QueueBlocked {
                    queue: f.lease.stream,
                    reaction,
                    event: at.as_ref().map_or(0, |a| a.event),
                    error,
                });
            }
            Some(Outcome::Defer { delay }) => {
                self.hint_due(delay);
                Counters::add(&self.counters.deferred, 1);
                tracing::debug!(queue = %f.lease.stream, ?delay, "event deferred by its handler");
                self.observer.send(BrokerEvent::Deferred {
                    queue: f.lease.stream,
                    reaction,
                    event: at.as_ref().map_or(0, |a| a.event),
                    delay,
                });
            }
            _ => {}
        }
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
                            metrics::count(metrics::LEASES_LOST, 1);
                            tracing::warn!(queue = %lease.stream, %rejection, "lease lost; telling the handler to stop");
                            self.observer.send(BrokerEvent::LeaseLost {
                                queue: lease.stream,
                            });
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
                            metrics::count(metrics::LEASES_LOST, 1);
                            tracing::warn!(queue = %lease.stream, "lease could not be renewed in time; telling the handler to stop");
                            self.observer.send(BrokerEvent::LeaseLost {
                                queue: lease.stream.clone(),
                            });
                        }
                    }
                }
                Err(e)
            }
        }
    }
}

impl Drop for Runner {
    /// However the run ends (returned, or aborted with its handle), its
    /// leases leave the gauge and the health says it is not running.
    fn drop(&mut self) {
        metrics::leases_held(-(self.held as i64));
        self.observer.update(|h| {
            h.running = false;
            h.leases_held = 0;
        });
    }
}

/// A backfill task's result, a panic in it (a resolver that panicked)
/// included.
fn flatten(res: Result<Result<Stepped>, JoinError>) -> Result<Stepped> {
    res.unwrap_or_else(|e| {
        Err(Error::Store {
            store: "broker".into(),
            source: format!("a backfill step failed: {e}").into(),
        })
    })
}
