//! Correlation: which of this broker's reactions are where in the log, and
//! the steps that move them.
//!
//! Reactions at the highest checkpoint form the *live* group: one read of
//! the log after that checkpoint serves all of them. A reaction behind it
//! (added later, or left behind by an older broker) is *backfilling*: it
//! reads bounded pages of the events it handles, up to the live checkpoint
//! exactly, so it lands on it and joins the live group. A reset queue is
//! *replaying*: each of its reactions re-reads the log into that queue alone
//! up to where it was at the reset. Backfill and replay steps run beside
//! live traffic, one page at a time, so caught-up reactions keep their
//! latency.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::dispatch::INVALID_TARGET_PREFIX;
use crate::app::Act;
use crate::error::Result;
use crate::event::Event;
use crate::query::Query;
use crate::queue::Work;
use crate::subscription::{Correlation, Replay, SubscriptionState};

/// How long a broker that lost a correlation race leaves that cursor to the
/// winner before trying again. Every broker reads and decodes the events it
/// correlates; when all of them do it on every wake-up, all but one throw
/// their reads away, and more brokers deliver less. If the winner stops,
/// another broker takes over within this time.
pub(super) const FOLLOW: Duration = Duration::from_millis(100);

/// The follow key of the live group ([`Job::key`] of a [`Job::Live`]).
const LIVE: &str = "live";

/// One correlation step to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Job {
    /// The live group after its checkpoint.
    Live { from: i64, reactions: Vec<String> },
    /// A group behind the live one, up to `bound` (the live checkpoint).
    Backfill {
        from: i64,
        bound: i64,
        reactions: Vec<String>,
    },
    /// A reset queue re-correlated for one reaction.
    Replay(Replay),
}

impl Job {
    /// The reactions the step moves.
    pub(super) fn reactions(&self) -> Vec<String> {
        match self {
            Job::Live { reactions, .. } | Job::Backfill { reactions, .. } => reactions.clone(),
            Job::Replay(r) => vec![r.reaction.clone()],
        }
    }

    fn key(&self) -> String {
        match self {
            Job::Live { .. } => LIVE.into(),
            Job::Backfill { reactions, .. } => format!("backfill {}", reactions.join(",")),
            Job::Replay(r) => format!("replay {} {}", r.stream, r.reaction),
        }
    }
}

/// What a step did.
#[derive(Debug)]
pub(super) struct Stepped {
    pub job: Job,
    /// Events read.
    pub read: usize,
    /// Items enqueued (before the store drops what others already wrote).
    pub items: usize,
    /// True when the page was full: more may follow at once.
    pub full: bool,
    /// Where the step ended, and what the call did to each reaction
    /// (`None` when no call was made).
    pub to: i64,
    pub after: Option<crate::subscription::Enqueued>,
}

/// This broker's view of its reactions' progress.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Reactions this broker runs that are active in the store: checkpoint.
    checkpoints: BTreeMap<String, i64>,
    /// Replays of reactions this broker runs.
    replays: Vec<Replay>,
    /// Cursors left to another broker until then (it won a race).
    follow: HashMap<String, Instant>,
}

impl Progress {
    /// Takes the store's word for where every reaction this broker runs is.
    pub(super) fn learn(&mut self, act: &Act, states: &[SubscriptionState], replays: Vec<Replay>) {
        self.checkpoints = states
            .iter()
            .filter(|s| s.retired.is_none() && act.registry().get(&s.name).is_some())
            .map(|s| (s.name.clone(), s.checkpoint))
            .collect();
        self.replays = replays
            .into_iter()
            .filter(|r| self.checkpoints.contains_key(&r.reaction))
            .collect();
    }

    /// The reactions this broker runs and the store has active.
    pub(super) fn reactions(&self) -> Vec<String> {
        self.checkpoints.keys().cloned().collect()
    }

    /// The live checkpoint (the highest of this broker's reactions).
    pub(super) fn live_checkpoint(&self) -> Option<i64> {
        self.checkpoints.values().copied().max()
    }

    /// True when `reaction` is at the live checkpoint.
    pub(super) fn is_live(&self, reaction: &str) -> bool {
        self.checkpoints.get(reaction).copied() == self.live_checkpoint()
            && self.checkpoints.contains_key(reaction)
    }

    /// The live step, unless another broker is doing it.
    pub(super) fn live(&self, now: Instant) -> Option<Job> {
        if self.following(LIVE, now) {
            return None;
        }
        let top = self.live_checkpoint()?;
        let reactions = self
            .checkpoints
            .iter()
            .filter(|(_, &c)| c == top)
            .map(|(n, _)| n.clone())
            .collect();
        Some(Job::Live {
            from: top,
            reactions,
        })
    }

    /// The next backfill or replay step: the group furthest behind first,
    /// then replays. `None` when there is none (or only ones another broker
    /// is taking).
    pub(super) fn next_backfill(&self, now: Instant) -> Option<Job> {
        let top = self.live_checkpoint()?;
        let mut groups: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (n, &c) in &self.checkpoints {
            if c < top {
                groups.entry(c).or_default().push(n.clone());
            }
        }
        let backfills = groups.into_iter().map(|(from, reactions)| Job::Backfill {
            from,
            bound: top,
            reactions,
        });
        let replays = self.replays.iter().cloned().map(Job::Replay);
        backfills
            .chain(replays)
            .find(|j| !self.following(&j.key(), now))
    }

    /// True while some backfill or replay is left, followed or not.
    pub(super) fn behind(&self) -> bool {
        let top = self.live_checkpoint();
        !self.replays.is_empty() || self.checkpoints.values().any(|c| Some(*c) < top)
    }

    fn following(&self, key: &str, now: Instant) -> bool {
        self.follow.get(key).is_some_and(|t| now < *t)
    }

    /// True when the live cursor was left to another broker and that time
    /// is over: before reading the log again, look whether it moved.
    pub(super) fn live_follow_over(&self, now: Instant) -> bool {
        self.follow.get(LIVE).is_some_and(|t| now >= *t)
    }

    /// Takes the store's word for where the live reactions are, after
    /// following another broker: true when it moved the live cursor past
    /// this broker's view meanwhile (this broker then follows it again, and
    /// reads nothing); false when it did not (it stopped, or the log is
    /// caught up: this broker takes the next step itself).
    pub(super) fn followed_moved(&mut self, states: &[SubscriptionState]) -> bool {
        let moved = self.adopt_live(states);
        if moved {
            self.follow.insert(LIVE.into(), Instant::now() + FOLLOW);
        } else {
            self.follow.remove(LIVE);
        }
        moved
    }

    /// Takes the store's word for where the live reactions are, where
    /// another broker moved them past this broker's view; the follow stays
    /// as it is. True when one moved.
    pub(super) fn adopt_live(&mut self, states: &[SubscriptionState]) -> bool {
        let Some(top) = self.live_checkpoint() else {
            return false;
        };
        let mut moved = false;
        for s in states.iter().filter(|s| s.retired.is_none()) {
            if let Some(c) = self.checkpoints.get_mut(&s.name) {
                if *c == top && s.checkpoint > *c {
                    *c = s.checkpoint;
                    moved = true;
                }
            }
        }
        moved
    }

    /// True while the live cursor is left to another broker.
    pub(super) fn following_live(&self, now: Instant) -> bool {
        self.following(LIVE, now)
    }

    /// Takes the live cursor back at once (the broker it was left to has
    /// reached the head of the log).
    pub(super) fn stop_following_live(&mut self) {
        self.follow.remove(LIVE);
    }

    /// The earliest time a followed cursor may be tried again.
    pub(super) fn follow_ends(&self) -> Option<Instant> {
        self.follow
            .values()
            .copied()
            .filter(|t| *t > Instant::now())
            .min()
    }

    /// Records what a step did. Returns true when another broker had moved
    /// one of its cursors first (this broker then follows it for a while).
    pub(super) fn apply(&mut self, s: &Stepped) -> bool {
        let Some(after) = &s.after else {
            return false;
        };
        let mut lost = false;
        let (reactions, replay) = match &s.job {
            Job::Live { reactions, .. } | Job::Backfill { reactions, .. } => {
                (reactions.clone(), None)
            }
            Job::Replay(r) => (vec![r.reaction.clone()], Some(r.stream.clone())),
        };
        for ((name, at), moved) in reactions
            .iter()
            .zip(&after.positions)
            .zip(after.moved.iter().chain(std::iter::repeat(&true)))
        {
            // Lost: another call moved this cursor, even to where this step
            // ends (it read the same page first).
            lost |= at.is_some() && !moved;
            match (&replay, at) {
                (None, Some(c)) => {
                    lost |= *c != s.to;
                    self.checkpoints.insert(name.clone(), *c);
                }
                (None, None) => {
                    tracing::warn!(reaction = %name, "reaction retired in the store: this broker stops running it");
                    self.checkpoints.remove(name);
                }
                (Some(q), at) => {
                    let keep = at.filter(|p| {
                        self.replays
                            .iter()
                            .any(|r| &r.stream == q && &r.reaction == name && *p < r.until)
                    });
                    lost |= at.is_some_and(|p| p != s.to);
                    match keep {
                        Some(p) => {
                            for r in &mut self.replays {
                                if &r.stream == q && &r.reaction == name {
                                    r.position = p;
                                }
                            }
                        }
                        None => self
                            .replays
                            .retain(|r| !(&r.stream == q && &r.reaction == name)),
                    }
                }
            }
        }
        let key = s.job.key();
        if lost {
            self.follow.insert(key, Instant::now() + FOLLOW);
        } else {
            self.follow.remove(&key);
        }
        lost
    }
}

/// Takes one step: reads a page, runs the resolvers, enqueues. Runs in an
/// `act.correlate` span.
pub(super) async fn step(act: &Act, job: Job, page: usize) -> Result<Stepped> {
    let span = tracing::debug_span!(
        "act.correlate",
        job = %job.key(),
        page,
        read = tracing::field::Empty
    );
    let stepped = step_in(act, job, page).instrument(span.clone()).await;
    if let Ok(s) = &stepped {
        span.record("read", s.read);
    }
    stepped
}

async fn step_in(act: &Act, job: Job, page: usize) -> Result<Stepped> {
    let store = act.store();
    let page = page.max(1);
    let (query, bound, reactions, replay) = match &job {
        Job::Live { from, reactions } => (
            Query::new().after(*from).limit(page),
            None,
            reactions.clone(),
            None,
        ),
        Job::Backfill {
            from,
            bound,
            reactions,
        } => (
            Query::new()
                .after(*from)
                .before(bound.saturating_add(1))
                .names(event_names(act, reactions))
                .limit(page),
            Some(*bound),
            reactions.clone(),
            None,
        ),
        Job::Replay(r) => (
            Query::new()
                .after(r.position)
                .before(r.until.saturating_add(1))
                .names(event_names(act, std::slice::from_ref(&r.reaction)))
                .limit(page),
            Some(r.until),
            vec![r.reaction.clone()],
            Some(r.stream.clone()),
        ),
    };
    let from = match &job {
        Job::Live { from, .. } | Job::Backfill { from, .. } => *from,
        Job::Replay(r) => r.position,
    };
    let events = store.query(&query).await?;
    let full = events.len() >= page;
    let to = match (events.last(), bound) {
        (Some(last), None) => last.id,
        (Some(last), Some(_)) if full => last.id,
        // The page holds everything up to the bound (events up to it were
        // visible to whoever moved the live checkpoint there).
        (_, Some(bound)) => bound,
        (None, None) => {
            return Ok(Stepped {
                job,
                read: 0,
                items: 0,
                full: false,
                to: from,
                after: None,
            })
        }
    };
    // Backfill and replay work yields to live work: one priority level
    // below the reaction's own, so queues holding only history are claimed
    // after queues with live events (a queue keeps the highest priority it
    // was given, so its first live event restores the reaction's level).
    let yields = !matches!(job, Job::Live { .. });
    let mut work = resolve(act, &events, &reactions, yields);
    if let Some(q) = &replay {
        work.retain(|w| &w.stream == q);
    }
    let items = work.len();
    let after = store
        .enqueue(&Correlation {
            reactions,
            replay,
            from,
            to,
            work,
        })
        .await?;
    Ok(Stepped {
        job,
        read: events.len(),
        items,
        full,
        to,
        after: Some(after),
    })
}

fn event_names(act: &Act, reactions: &[String]) -> Vec<String> {
    let mut names: Vec<String> = reactions
        .iter()
        .filter_map(|r| act.registry().get(r))
        .flat_map(|r| r.events().iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Runs a reaction's resolver on an event; a panic (a bug in the
/// resolver) becomes an error text instead of taking the broker down.
pub(crate) fn resolve_caught(
    r: &crate::reaction::Reaction,
    e: &Event,
) -> std::result::Result<Option<String>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.resolver().resolve(e)))
        .map_err(|p| {
            let text = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".into());
            format!("the resolver panicked: {text}")
        })
        .and_then(|r| r.map_err(|why| format!("the resolver failed: {why}")))
}

/// The work `reactions` find in `events`: one item per (queue, event,
/// reaction). A target no store accepts goes to the reaction's
/// invalid-target queue, where it blocks with the reason.
fn resolve(
    act: &Act,
    events: &[std::sync::Arc<Event>],
    reactions: &[String],
    yields: bool,
) -> Vec<Work> {
    let mut work = Vec::new();
    for e in events {
        for r in act.registry().for_event(&e.name) {
            if !reactions.iter().any(|n| n == r.name()) {
                continue;
            }
            let stream = match resolve_caught(r, e) {
                Ok(None) => continue,
                Ok(Some(s))
                    if crate::limits::check_name("the queue name", &s).is_ok()
                        && !s.starts_with(INVALID_TARGET_PREFIX) =>
                {
                    s
                }
                answer => {
                    tracing::warn!(reaction = r.name(), event = e.id, ?answer,
                        "the resolver answered no queue name a store accepts; the event goes to the reaction's invalid-target queue");
                    format!("{INVALID_TARGET_PREFIX}{}", r.name())
                }
            };
            work.push(Work {
                stream,
                event: e.id,
                reaction: r.name().to_string(),
                priority: if yields {
                    r.options().priority.saturating_sub(1)
                } else {
                    r.options().priority
                },
            });
        }
    }
    work
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn state(name: &str, checkpoint: i64) -> SubscriptionState {
        SubscriptionState {
            name: name.into(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
            checkpoint,
            created: Utc::now(),
            seen: Utc::now(),
            retired: None,
        }
    }

    fn following(at: i64) -> Progress {
        let mut p = Progress::default();
        p.checkpoints.insert("a".into(), at);
        p.checkpoints.insert("b".into(), at);
        // A race lost a while ago: the follow is over.
        p.follow
            .insert(LIVE.into(), Instant::now() - Duration::from_millis(1));
        p
    }

    #[tokio::test]
    async fn a_follower_whose_winner_moved_on_follows_again_without_reading() {
        let mut p = following(10);
        assert!(p.live_follow_over(Instant::now()));
        assert!(p.followed_moved(&[state("a", 30), state("b", 30)]));
        assert_eq!(p.live_checkpoint(), Some(30), "it takes the winner's word");
        assert!(
            p.live(Instant::now()).is_none(),
            "and leaves the cursor to it"
        );
        assert!(!p.live_follow_over(Instant::now()));
    }

    #[tokio::test]
    async fn a_follower_whose_winner_stopped_takes_the_next_step_itself() {
        let mut p = following(10);
        assert!(!p.followed_moved(&[state("a", 10), state("b", 10)]));
        assert_eq!(
            p.live(Instant::now()),
            Some(Job::Live {
                from: 10,
                reactions: vec!["a".into(), "b".into()]
            })
        );
    }
}
