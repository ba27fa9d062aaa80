//! Property tests: random interleavings of appends, correlation steps (live,
//! backfill of a reaction added later, replays of reset queues), claims by
//! brokers that have different sets of reactions, acks, failures (retry,
//! block), renewals, releases, lease expiries, crashed brokers, unblocks,
//! resets and retirements, checked step by step against a reference model
//! of the queue store contract.
//!
//! After every step the store must agree with the model on every queue
//! (position, head, next, lag, retries, blocked, token, replay horizon), and
//! every claim must hand out exactly the queues and pending items the model
//! expects: never a queue another broker holds a live lease on, never an
//! item for a reaction the claimer lacks, never an item twice unless its
//! lease ended. A lease that ends without a settlement counts as a failed
//! attempt. At the end a healer finishes every replay and drains every
//! queue: no item is lost.
//!
//! Cases: `PROPTEST_CASES` (default 40). Backends whose clock cannot be moved
//! run without lease expiries and with zero retry delays.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::support::pings;
use super::Backend;
use crate::queue::{Batch, Claim, Lease, Outcome, QueueFilter, Rejection, Settlement, Work};
use crate::store::Store;
use crate::subscription::{Correlation, Subscription};

const LEASE_SECS: u64 = 30;
const OWNERS: usize = 3;
/// `ra` sends each event to `q{stream}`, `rb` every event to `all`; `rc`
/// (added later by [`Op::Join`]) also sends to `q{stream}`, backfilling
/// below the positions `ra` reached.
const REACTIONS: [&str; 3] = ["ra", "rb", "rc"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u8,
        n: u8,
    },
    Correlate {
        backfill: bool,
        page: u8,
    },
    Join,
    Replay {
        pick: u8,
        page: u8,
    },
    Claim {
        owner: u8,
        queues: u8,
        events: u8,
        mine: u8,
    },
    Settle {
        owner: u8,
        pick: u8,
        keep: u8,
        kind: Kind,
        /// Claim in the same call (`settle_and_claim`): queues, events,
        /// reactions as [`Op::Claim`].
        then: Option<(u8, u8, u8)>,
    },
    Renew {
        owner: u8,
    },
    Release {
        owner: u8,
        pick: u8,
    },
    Advance {
        secs: u8,
    },
    Crash {
        owner: u8,
    },
    Unblock {
        queue: u8,
    },
    Reset {
        queue: u8,
        back: u8,
    },
    Retire {
        which: u8,
    },
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ack,
    Retry { delay: u8 },
    Block,
    Defer { delay: u8 },
}

/// The claim of [`Op::Claim`]'s numbers.
fn claim_of(owner: u8, queues: u8, events: u8, mine: u8) -> Claim {
    Claim {
        owner: format!("o{owner}"),
        queues: queues as usize,
        events: events as usize,
        lease: Duration::from_secs(LEASE_SECS),
        reactions: match mine {
            0 => vec!["ra".into()],
            1 => vec!["ra".into(), "rb".into()],
            _ => REACTIONS.iter().map(|r| r.to_string()).collect(),
        },
    }
}

/// A settle alone half the time, else a settle and a claim in one call.
fn then() -> impl Strategy<Value = Option<(u8, u8, u8)>> {
    proptest::option::of((0..4u8, 1..5u8, 0..4u8))
}

fn op() -> impl Strategy<Value = Op> {
    let owner = 0..OWNERS as u8;
    prop_oneof![
        4 => (0..3u8, 1..4u8).prop_map(|(stream, n)| Op::Append { stream, n }),
        3 => (any::<bool>(), 1..6u8).prop_map(|(backfill, page)| Op::Correlate { backfill, page }),
        1 => Just(Op::Join),
        1 => (any::<u8>(), 1..6u8).prop_map(|(pick, page)| Op::Replay { pick, page }),
        5 => (owner.clone(), 1..4u8, 1..5u8, 0..4u8).prop_map(|(owner, queues, events, mine)| Op::Claim { owner, queues, events, mine }),
        4 => (owner.clone(), any::<u8>(), any::<u8>(), then()).prop_map(|(owner, pick, keep, then)| Op::Settle { owner, pick, keep, kind: Kind::Ack, then }),
        2 => (owner.clone(), any::<u8>(), any::<u8>(), 0..25u8, then()).prop_map(|(owner, pick, keep, delay, then)| Op::Settle { owner, pick, keep, kind: Kind::Retry { delay }, then }),
        1 => (owner.clone(), any::<u8>(), any::<u8>(), then()).prop_map(|(owner, pick, keep, then)| Op::Settle { owner, pick, keep, kind: Kind::Block, then }),
        1 => (owner.clone(), any::<u8>(), any::<u8>(), 0..25u8, then()).prop_map(|(owner, pick, keep, delay, then)| Op::Settle { owner, pick, keep, kind: Kind::Defer { delay }, then }),
        1 => owner.clone().prop_map(|owner| Op::Renew { owner }),
        1 => (owner.clone(), any::<u8>()).prop_map(|(owner, pick)| Op::Release { owner, pick }),
        2 => (1..40u8).prop_map(|secs| Op::Advance { secs }),
        1 => owner.prop_map(|owner| Op::Crash { owner }),
        1 => (0..5u8).prop_map(|queue| Op::Unblock { queue }),
        1 => (0..5u8, any::<u8>()).prop_map(|(queue, back)| Op::Reset { queue, back }),
        1 => (0..2u8).prop_map(|which| Op::Retire { which }),
    ]
}

/// The target of reaction `r` for an event of stream `s{stream}`.
fn target(reaction: &str, stream: u8) -> String {
    match reaction {
        "rb" => "all".to_string(),
        _ => format!("q{stream}"),
    }
}

#[derive(Debug, Default, Clone)]
struct MQueue {
    /// (event, reaction) → enqueue sequence number.
    items: BTreeMap<(i64, String), i64>,
    enqueued: i64,
    head: i64,
    position: i64,
    floor: i64,
    retries: u32,
    lapses: u32,
    retry_at: Option<u64>,
    blocked: bool,
    token: i64,
    /// (owner, expiry); kept after expiry until a claim counts it.
    lease: Option<(usize, u64)>,
    replay: Option<i64>,
    leased_to: i64,
    suspect_to: i64,
}

impl MQueue {
    fn next(&self) -> Option<i64> {
        self.items.keys().next().map(|(e, _)| *e)
    }
    fn deliverable(&self) -> bool {
        self.next()
            .is_some_and(|n| self.replay.is_none_or(|h| n <= h))
    }
    fn lag(&self) -> u64 {
        let mut events: Vec<i64> = self.items.keys().map(|(e, _)| *e).collect();
        events.dedup();
        events.len() as u64
    }
    fn live(&self, now: u64) -> bool {
        self.lease.is_some_and(|(_, exp)| exp > now)
    }
    fn claimable(&self, now: u64) -> bool {
        !self.blocked
            && self.deliverable()
            && !self.live(now)
            && self.retry_at.is_none_or(|t| t <= now)
    }
    /// Up to `limit` pending events within the replay horizon, with their
    /// reactions in name order.
    fn pending(&self, limit: usize) -> Vec<(i64, Vec<String>)> {
        let mut out: Vec<(i64, Vec<String>)> = Vec::new();
        for (e, r) in self.items.keys() {
            if self.replay.is_some_and(|h| *e > h) {
                break;
            }
            if let Some((last, rs)) = out.last_mut() {
                if last == e {
                    rs.push(r.clone());
                    continue;
                }
            }
            if out.len() == limit {
                break;
            }
            out.push((*e, vec![r.clone()]));
        }
        out
    }
    fn enqueue(&mut self, event: i64, reaction: &str) {
        let key = (event, reaction.to_string());
        if event <= self.floor || self.items.contains_key(&key) {
            return;
        }
        self.enqueued += 1;
        self.items.insert(key, self.enqueued);
        self.head = self.head.max(event);
    }
    fn check(
        &self,
        stream: &str,
        token: i64,
        now: u64,
        from: Option<i64>,
    ) -> Result<(), Rejection> {
        if token != self.token {
            return Err(Rejection::Stale {
                stream: stream.into(),
                token,
                current: self.token,
            });
        }
        if !self.live(now) {
            return Err(Rejection::Expired {
                stream: stream.into(),
                token,
            });
        }
        match from {
            Some(f) if f != self.position => Err(Rejection::Moved {
                stream: stream.into(),
                expected: f,
                actual: self.position,
            }),
            _ => Ok(()),
        }
    }
    fn suspect(&self) -> bool {
        self.suspect_to > 0 && self.next().is_some_and(|n| n <= self.suspect_to)
    }
    fn clear(&mut self) {
        self.retries = 0;
        self.lapses = 0;
        self.retry_at = None;
        self.lease = None;
    }
}

#[derive(Debug, Clone)]
struct MSub {
    checkpoint: i64,
    target: Option<String>,
    retired: bool,
}

/// What the model expects a claim to hand out for one queue: its pending
/// events with their reactions, and the lease's retries, lapses, mark and
/// suspect flag.
type Expected = (Vec<(i64, Vec<String>)>, u32, u32, i64, bool);

struct Held {
    lease: Lease,
    events: Vec<i64>,
}

struct Model {
    manual: bool,
    now: u64,
    events: Vec<(i64, u8)>,
    subs: BTreeMap<String, MSub>,
    /// (queue, reaction) → (position, until)
    replays: BTreeMap<(String, String), (i64, i64)>,
    queues: BTreeMap<String, MQueue>,
    held: Vec<Vec<Held>>,
}

fn same_kind(a: &Result<(), Rejection>, b: &Result<(), Rejection>) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
        && match (a, b) {
            (Err(x), Err(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
            _ => true,
        }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

fn subscription(name: &str) -> Subscription {
    Subscription {
        name: name.to_string(),
        events: vec!["Ping".into()],
        target: (name == "rb").then(|| "all".to_string()),
        start: 0,
    }
}

impl Model {
    fn queue_name(&self, i: u8) -> String {
        let names: Vec<&String> = self.queues.keys().collect();
        if names.is_empty() {
            return "q0".into();
        }
        names[i as usize % names.len()].clone()
    }

    fn refresh_replay(&mut self, queue: &str) {
        let horizon = self
            .replays
            .iter()
            .filter(|((q, _), _)| q == queue)
            .map(|(_, (p, _))| *p)
            .min();
        if let Some(q) = self.queues.get_mut(queue) {
            q.replay = horizon;
        }
    }

    /// Runs one correlation step on the store and the model alike.
    async fn correlate(
        &mut self,
        s: &dyn Store,
        reactions: Vec<String>,
        replay: Option<String>,
        from: i64,
        bound: Option<i64>,
        page: usize,
    ) -> Result<(), TestCaseError> {
        let err = |e: crate::Error| TestCaseError::fail(format!("enqueue: {e}"));
        let read: Vec<(i64, u8)> = self
            .events
            .iter()
            .copied()
            .filter(|(id, _)| *id > from && bound.is_none_or(|b| *id <= b))
            .take(page)
            .collect();
        let to = match (read.last(), bound) {
            (Some(&(last, _)), None) => last,
            (Some(&(last, _)), Some(_)) if read.len() == page => last,
            (_, Some(b)) => b,
            (None, None) => return Ok(()),
        };
        let mut work = Vec::new();
        for &(id, stream) in &read {
            for r in &reactions {
                let q = target(r, stream);
                if replay.as_ref().is_some_and(|x| *x != q) {
                    continue;
                }
                work.push(Work {
                    stream: q,
                    event: id,
                    reaction: r.clone(),
                    priority: 0,
                });
            }
        }
        let step = Correlation {
            reactions: reactions.clone(),
            replay: replay.clone(),
            from,
            to,
            work: work.clone(),
        };
        let after = s.enqueue(&step).await.map_err(err)?;
        ensure!(
            after.positions == vec![Some(to); reactions.len()]
                && after.moved == vec![true; reactions.len()],
            "step {step:?} returned {after:?}"
        );
        for w in work {
            self.queues
                .entry(w.stream.clone())
                .or_default()
                .enqueue(w.event, &w.reaction);
        }
        for r in &reactions {
            match &replay {
                None => {
                    if let Some(sub) = self.subs.get_mut(r) {
                        sub.checkpoint = to;
                    }
                }
                Some(q) => {
                    let key = (q.clone(), r.clone());
                    let done = self.replays.get_mut(&key).is_some_and(|p| {
                        p.0 = to;
                        p.0 >= p.1
                    });
                    if done {
                        self.replays.remove(&key);
                    }
                }
            }
        }
        if let Some(q) = &replay {
            self.refresh_replay(q);
        }
        Ok(())
    }

    /// Checks a claim's batches against the model's claim and takes them
    /// up.
    fn claimed(&mut self, owner: usize, c: &Claim, got: Vec<Batch>) -> Result<(), TestCaseError> {
        let (queues, events, mine) = (c.queues, c.events, &c.reactions);
        // The model's claim: in claim order (every priority is 0:
        // oldest pending event, then name), count lapses, lease what
        // the claimer can run, until `queues` are leased.
        let mut order: Vec<(i64, String)> = self
            .queues
            .iter()
            .filter(|(_, q)| q.claimable(self.now))
            .filter_map(|(n, q)| q.next().map(|e| (e, n.clone())))
            .collect();
        order.sort();
        let mut want: BTreeMap<String, Expected> = BTreeMap::new();
        for (_, name) in order {
            if want.len() == queues {
                break;
            }
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            if q.lease.take().is_some() {
                q.retries += 1;
                q.lapses += 1;
                q.suspect_to = q.suspect_to.max(q.leased_to);
            }
            let suspect = q.suspect();
            let pending = q.pending(if suspect { 1 } else { events });
            let cut = pending
                .iter()
                .position(|(_, rs)| !rs.iter().all(|r| mine.contains(r)))
                .unwrap_or(pending.len());
            if cut == 0 {
                continue;
            }
            q.leased_to = pending[cut - 1].0;
            want.insert(
                name.clone(),
                (
                    pending[..cut].to_vec(),
                    q.retries,
                    q.lapses,
                    q.enqueued,
                    suspect,
                ),
            );
        }
        let got_names: Vec<String> = got.iter().map(|b| b.lease.stream.clone()).collect();
        ensure!(
            got_names.len() == want.len() && got_names.iter().all(|n| want.contains_key(n)),
            "claim by {mine:?} returned {got_names:?}, the model expects {:?}",
            want.keys().collect::<Vec<_>>()
        );
        for b in &got {
            let name = b.lease.stream.clone();
            let (items, retries, lapses, mark, suspect) = &want[&name];
            let got_items: Vec<(i64, Vec<String>)> = b
                .events
                .iter()
                .map(|p| {
                    let mut rs = p.reactions.clone();
                    rs.sort();
                    (p.event.id, rs)
                })
                .collect();
            ensure!(
                &got_items == items,
                "claim of {name} returned {got_items:?}, expected {items:?}"
            );
            let q = self.queues.get_mut(&name).expect("claimed queue exists");
            ensure!(
                (
                    b.lease.position,
                    b.lease.retries,
                    b.lease.lapses,
                    b.lease.mark,
                    b.lease.suspect
                ) == (q.position, *retries, *lapses, *mark, *suspect),
                "lease of {name}: (position, retries, lapses, mark, suspect) {:?}, model {:?}",
                (
                    b.lease.position,
                    b.lease.retries,
                    b.lease.lapses,
                    b.lease.mark,
                    b.lease.suspect
                ),
                (q.position, retries, lapses, mark, suspect)
            );
            ensure!(
                b.lease.token > q.token,
                "token did not increase on claim of {name}"
            );
            q.token = b.lease.token;
            q.lease = Some((owner, self.now + LEASE_SECS));
            self.held[owner].push(Held {
                lease: b.lease.clone(),
                events: items.iter().map(|(e, _)| *e).collect(),
            });
        }
        Ok(())
    }

    async fn step(&mut self, f: &super::Fixture, op: &Op) -> Result<(), TestCaseError> {
        let s: &dyn Store = &*f.store;
        let err = |e: crate::Error| TestCaseError::fail(format!("{op:?}: store error {e}"));
        match *op {
            Op::Append { stream, n } => {
                for id in pings(s, &format!("s{stream}"), n as usize).await {
                    self.events.push((id, stream));
                }
            }
            Op::Correlate { backfill, page } => {
                let active: Vec<(String, i64)> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| !s.retired)
                    .map(|(n, s)| (n.clone(), s.checkpoint))
                    .collect();
                let Some(top) = active.iter().map(|(_, c)| *c).max() else {
                    return Ok(());
                };
                let (from, bound) = if backfill {
                    match active.iter().map(|(_, c)| *c).filter(|c| *c < top).min() {
                        Some(low) => (low, Some(top)),
                        None => return Ok(()),
                    }
                } else {
                    (top, None)
                };
                let group: Vec<String> = active
                    .into_iter()
                    .filter(|(_, c)| *c == from)
                    .map(|(n, _)| n)
                    .collect();
                self.correlate(s, group, None, from, bound, page as usize)
                    .await?;
            }
            Op::Join => {
                if self.subs.contains_key("rc") {
                    return Ok(());
                }
                s.subscribe(&[subscription("rc")]).await.map_err(err)?;
                self.subs.insert(
                    "rc".into(),
                    MSub {
                        checkpoint: 0,
                        target: None,
                        retired: false,
                    },
                );
            }
            Op::Replay { pick, page } => {
                let keys: Vec<(String, String)> = self.replays.keys().cloned().collect();
                if keys.is_empty() {
                    return Ok(());
                }
                let (q, r) = keys[pick as usize % keys.len()].clone();
                let (position, until) = self.replays[&(q.clone(), r.clone())];
                self.correlate(s, vec![r], Some(q), position, Some(until), page as usize)
                    .await?;
            }
            Op::Claim {
                owner,
                queues,
                events,
                mine,
            } => {
                let c = claim_of(owner, queues, events, mine);
                let got = s.claim(&c).await.map_err(err)?;
                self.claimed(owner as usize, &c, got)?;
            }
            Op::Settle {
                owner,
                pick,
                keep,
                kind,
                then,
            } => {
                let owner = owner as usize;
                if self.held[owner].is_empty() {
                    return Ok(());
                }
                let i = pick as usize % self.held[owner].len();
                let h = self.held[owner].remove(i);
                let k = keep as usize % (h.events.len() + 1);
                let acked = (k > 0).then(|| h.events[k - 1]);
                let kind = match kind {
                    Kind::Retry { .. } if !self.manual => Kind::Retry { delay: 0 },
                    Kind::Defer { .. } if !self.manual => Kind::Defer { delay: 0 },
                    Kind::Ack if acked.is_none() => Kind::Retry { delay: 0 },
                    other => other,
                };
                let settlement = match kind {
                    Kind::Ack => Settlement::ack(&h.lease, acked.unwrap_or_default()),
                    Kind::Retry { delay } => Settlement::retry(
                        &h.lease,
                        acked,
                        Duration::from_secs(delay as u64),
                        "retry",
                    ),
                    Kind::Block => Settlement::block(&h.lease, acked, "block"),
                    Kind::Defer { delay } => {
                        Settlement::defer(&h.lease, acked, Duration::from_secs(delay as u64))
                    }
                };
                let name = h.lease.stream.clone();
                let q = self.queues.get_mut(&name).expect("held queue exists");
                let predicted = q.check(&name, h.lease.token, self.now, Some(h.lease.position));
                let then =
                    then.map(|(queues, events, mine)| claim_of(owner as u8, queues, events, mine));
                let (got, claimed) = match &then {
                    None => (
                        s.settle(std::slice::from_ref(&settlement))
                            .await
                            .map_err(err)?,
                        None,
                    ),
                    Some(c) => {
                        let out = s
                            .settle_and_claim(std::slice::from_ref(&settlement), c)
                            .await;
                        (out.settled.map_err(err)?, Some(out.claimed.map_err(err)?))
                    }
                };
                ensure!(
                    got.len() == 1,
                    "settle returned {} results for 1",
                    got.len()
                );
                ensure!(
                    same_kind(&got[0], &predicted),
                    "settle of {name}: store {:?}, model {predicted:?}",
                    got[0]
                );
                if predicted.is_ok() {
                    q.lease = None;
                    if let Some(a) = acked {
                        q.items.retain(|(e, _), seq| *e > a || *seq > h.lease.mark);
                        q.position = q.position.max(a);
                        if a >= q.suspect_to {
                            q.suspect_to = 0;
                        }
                    }
                    let progress = acked.is_some();
                    let failed = |q: &mut MQueue| {
                        q.retries = crate::queue::retries_after_failure(progress, q.retries);
                        if progress {
                            q.lapses = 0;
                        }
                    };
                    match settlement.outcome {
                        Outcome::Ack => {
                            q.retries = 0;
                            q.lapses = 0;
                            q.retry_at = None;
                        }
                        Outcome::Retry { delay, .. } => {
                            failed(q);
                            q.retry_at = Some(self.now + delay.as_secs());
                        }
                        Outcome::Block { .. } => {
                            failed(q);
                            q.retry_at = None;
                            q.blocked = true;
                        }
                        Outcome::Defer { delay } => {
                            q.retries = crate::queue::retries_after_deferral(progress, q.retries);
                            if progress {
                                q.lapses = 0;
                            }
                            q.retry_at = Some(self.now + delay.as_secs());
                        }
                    }
                }
                // The claim of the same call sees the settlement applied.
                if let (Some(c), Some(got)) = (&then, claimed) {
                    self.claimed(owner, c, got)?;
                }
            }
            Op::Renew { owner } => {
                let owner = owner as usize;
                if self.held[owner].is_empty() {
                    return Ok(());
                }
                let refs: Vec<_> = self.held[owner]
                    .iter()
                    .map(|h| h.lease.reference())
                    .collect();
                let got = s
                    .renew(&refs, Duration::from_secs(LEASE_SECS))
                    .await
                    .map_err(err)?;
                ensure!(got.len() == refs.len(), "renew result count");
                let mut keep = Vec::new();
                for (h, r) in std::mem::take(&mut self.held[owner]).into_iter().zip(got) {
                    let q = self
                        .queues
                        .get_mut(&h.lease.stream)
                        .expect("held queue exists");
                    let predicted = q.check(&h.lease.stream, h.lease.token, self.now, None);
                    let r = r.map(|_| ());
                    ensure!(
                        same_kind(&r, &predicted),
                        "renew of {}: store {r:?}, model {predicted:?}",
                        h.lease.stream
                    );
                    if predicted.is_ok() {
                        q.lease = Some((owner, self.now + LEASE_SECS));
                        keep.push(h);
                    }
                }
                self.held[owner] = keep;
            }
            Op::Release { owner, pick } => {
                let owner = owner as usize;
                if self.held[owner].is_empty() {
                    return Ok(());
                }
                let i = pick as usize % self.held[owner].len();
                let h = self.held[owner].remove(i);
                let q = self
                    .queues
                    .get_mut(&h.lease.stream)
                    .expect("held queue exists");
                let predicted: Result<(), Rejection> = if q.token == h.lease.token {
                    Ok(())
                } else {
                    Err(Rejection::Stale {
                        stream: h.lease.stream.clone(),
                        token: h.lease.token,
                        current: q.token,
                    })
                };
                let got = s.release(&[h.lease.reference()]).await.map_err(err)?;
                ensure!(
                    same_kind(&got[0], &predicted),
                    "release: store {:?}, model {predicted:?}",
                    got[0]
                );
                if predicted.is_ok() {
                    q.lease = None;
                }
            }
            Op::Advance { secs } => {
                if self.manual {
                    f.clock.advance(Duration::from_secs(secs as u64)).await;
                    self.now += secs as u64;
                }
            }
            Op::Crash { owner } => self.held[owner as usize].clear(),
            Op::Unblock { queue } => {
                let name = self.queue_name(queue);
                let got = s.unblock(std::slice::from_ref(&name)).await.map_err(err)?;
                let q = self.queues.get_mut(&name);
                let was = q.as_ref().is_some_and(|q| q.blocked);
                ensure!(
                    got == if was { vec![name.clone()] } else { vec![] },
                    "unblock {name}: {got:?}, blocked {was}"
                );
                if let Some(q) = q {
                    if was {
                        q.blocked = false;
                        q.clear();
                        let token = super::support::queue(s, &name).await.token;
                        ensure!(token > q.token, "unblock did not increase the token");
                        q.token = token;
                    }
                }
            }
            Op::Reset { queue, back } => {
                let name = self.queue_name(queue);
                let Some(q) = self.queues.get(&name) else {
                    return Ok(());
                };
                let mut candidates = vec![0, q.position];
                candidates.extend(q.items.keys().map(|(e, _)| *e));
                let to = candidates[back as usize % candidates.len()];
                let old_token = q.token;
                let st = s.reset(&name, to).await.map_err(err)?;
                ensure!(st.token > old_token, "reset did not increase the token");
                self.replays.retain(|(x, _), _| *x != name);
                let subs: Vec<(String, i64)> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| !s.retired && s.target.as_ref().is_none_or(|t| *t == name))
                    .map(|(n, s)| (n.clone(), s.checkpoint))
                    .collect();
                for (r, cp) in subs {
                    if cp > to {
                        self.replays.insert((name.clone(), r), (to, cp));
                    }
                }
                let q = self.queues.get_mut(&name).expect("queue exists");
                q.items.clear();
                q.position = to;
                q.floor = to;
                q.suspect_to = 0;
                q.blocked = false;
                q.clear();
                q.token = st.token;
                self.refresh_replay(&name);
            }
            Op::Retire { which } => {
                let name = ["rb", "rc"][which as usize % 2];
                if !self.subs.contains_key(name) {
                    return Ok(());
                }
                let got = s.retire(&[name.to_string()]).await.map_err(err)?;
                let newly = !self.subs[name].retired;
                let mut dropped = 0u64;
                let mut queues = 0u64;
                if newly {
                    for q in self.queues.values_mut() {
                        let before = q.items.len();
                        q.items.retain(|(_, r), _| r != name);
                        let n = (before - q.items.len()) as u64;
                        if n > 0 {
                            dropped += n;
                            queues += 1;
                        }
                    }
                    let gone: Vec<String> = self
                        .replays
                        .keys()
                        .filter(|(_, r)| r == name)
                        .map(|(q, _)| q.clone())
                        .collect();
                    for q in gone {
                        self.replays.remove(&(q.clone(), name.to_string()));
                        self.refresh_replay(&q);
                    }
                    if let Some(s) = self.subs.get_mut(name) {
                        s.retired = true;
                    }
                }
                ensure!(
                    got.len() == 1 && (got[0].dropped, got[0].queues, got[0].newly) == (dropped, queues, newly),
                    "retire {name}: store {got:?}, model dropped {dropped} in {queues} queues (newly {newly})"
                );
            }
        }
        self.compare(s, op).await
    }

    async fn compare(&self, s: &dyn Store, op: &Op) -> Result<(), TestCaseError> {
        let rows = s
            .queues(&QueueFilter::default())
            .await
            .map_err(|e| TestCaseError::fail(format!("queues: {e}")))?;
        let names: Vec<&String> = self.queues.keys().collect();
        let got_names: Vec<&String> = rows.iter().map(|r| &r.stream).collect();
        ensure!(
            got_names == names,
            "after {op:?}: queues {got_names:?}, model {names:?}"
        );
        for r in rows {
            let q = &self.queues[&r.stream];
            let got = (
                r.position, r.head, r.next, r.lag, r.blocked, r.retries, r.token, r.replay,
            );
            let want = (
                q.position,
                q.head,
                q.next(),
                q.lag(),
                q.blocked,
                q.retries,
                q.token,
                q.replay,
            );
            ensure!(
                got == want,
                "after {op:?}, queue {}: (position, head, next, lag, blocked, retries, token, replay) store {got:?}, model {want:?}",
                r.stream
            );
            if let Some(w) = &r.waiting {
                let first: Vec<&String> = q
                    .items
                    .keys()
                    .filter(|(e, _)| Some(*e) == q.next())
                    .map(|(_, r)| r)
                    .collect();
                ensure!(
                    first.contains(&w),
                    "queue {} waits for `{w}`, which has no item at its first pending event ({first:?})",
                    r.stream
                );
            }
        }
        let subs = s
            .subscriptions()
            .await
            .map_err(|e| TestCaseError::fail(format!("subscriptions: {e}")))?;
        for st in subs {
            let m = self
                .subs
                .get(&st.name)
                .ok_or_else(|| TestCaseError::fail(format!("unknown subscription {}", st.name)))?;
            ensure!(
                (st.checkpoint, st.retired.is_some()) == (m.checkpoint, m.retired),
                "after {op:?}, subscription {}: store ({}, retired {}), model ({}, retired {})",
                st.name,
                st.checkpoint,
                st.retired.is_some(),
                m.checkpoint,
                m.retired
            );
        }
        let replays: Vec<(String, String, i64, i64)> = s
            .replays()
            .await
            .map_err(|e| TestCaseError::fail(format!("replays: {e}")))?
            .into_iter()
            .map(|r| (r.stream, r.reaction, r.position, r.until))
            .collect();
        let want: Vec<(String, String, i64, i64)> = self
            .replays
            .iter()
            .map(|((q, r), (p, u))| (q.clone(), r.clone(), *p, *u))
            .collect();
        ensure!(
            replays == want,
            "after {op:?}: replays {replays:?}, model {want:?}"
        );
        let pending = s
            .pending_by_reaction()
            .await
            .map_err(|e| TestCaseError::fail(format!("pending_by_reaction: {e}")))?;
        let mut want: BTreeMap<Vec<u8>, (String, u64)> = BTreeMap::new();
        for q in self.queues.values() {
            for (_, r) in q.items.keys() {
                want.entry(r.as_bytes().to_vec())
                    .or_insert_with(|| (r.clone(), 0))
                    .1 += 1;
            }
        }
        let want: Vec<(String, u64)> = want.into_values().collect();
        ensure!(
            pending == want,
            "after {op:?}: pending items per reaction: store {pending:?}, model {want:?}"
        );
        Ok(())
    }

    /// Finishes every replay, clears every lease and block, then drains:
    /// every queue must end with nothing pending.
    async fn heal(&mut self, s: &dyn Store) -> Result<(), TestCaseError> {
        let err = |e: crate::Error| TestCaseError::fail(format!("heal: {e}"));
        while let Some(((q, r), (position, until))) =
            self.replays.iter().next().map(|(k, v)| (k.clone(), *v))
        {
            self.correlate(s, vec![r], Some(q), position, Some(until), 1000)
                .await?;
        }
        let names: Vec<String> = self.queues.keys().cloned().collect();
        s.unblock(&names).await.map_err(err)?;
        let all: Vec<String> = REACTIONS.iter().map(|r| r.to_string()).collect();
        for _ in 0..1000 {
            let got = s
                .claim(&Claim {
                    owner: "healer".into(),
                    queues: 100,
                    events: 1000,
                    lease: Duration::from_secs(LEASE_SECS),
                    reactions: all.clone(),
                })
                .await
                .map_err(err)?;
            if got.is_empty() {
                break;
            }
            let acks: Vec<Settlement> = got
                .iter()
                .filter_map(|b| {
                    b.events
                        .last()
                        .map(|p| Settlement::ack(&b.lease, p.event.id))
                })
                .collect();
            for r in s.settle(&acks).await.map_err(err)? {
                ensure!(r.is_ok(), "heal ack rejected: {r:?}");
            }
        }
        for r in s.queues(&QueueFilter::default()).await.map_err(err)? {
            let q = &self.queues[&r.stream];
            // On a clock that cannot be moved, leases of crashed brokers
            // are still live: those queues wait for them.
            let waiting = !self.manual && r.lease_expires.is_some();
            ensure!(
                r.lag == 0 || waiting,
                "queue {} left behind: {r:?}",
                r.stream
            );
            ensure!(r.head == q.head, "queue {} lost work: {r:?}", r.stream);
        }
        Ok(())
    }
}

/// The store agrees with the reference model under random interleavings.
pub fn queue_store_matches_the_model(b: &impl Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(40);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        rt.block_on(async {
            let f = b.open().await;
            f.store
                .subscribe(&[subscription("ra"), subscription("rb")])
                .await
                .map_err(|e| TestCaseError::fail(format!("subscribe: {e}")))?;
            let mut m = Model {
                manual: f.clock.is_manual(),
                now: 0,
                events: Vec::new(),
                subs: ["ra", "rb"]
                    .iter()
                    .map(|n| {
                        (
                            n.to_string(),
                            MSub {
                                checkpoint: 0,
                                target: (*n == "rb").then(|| "all".to_string()),
                                retired: false,
                            },
                        )
                    })
                    .collect(),
                replays: BTreeMap::new(),
                queues: BTreeMap::new(),
                held: (0..OWNERS).map(|_| Vec::new()).collect(),
            };
            for op in &ops {
                m.step(&f, op).await?;
            }
            if m.manual {
                f.clock.advance(Duration::from_secs(LEASE_SECS * 10)).await;
            }
            m.heal(&*f.store).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
