//! Property tests: random interleavings of appends, correlation, claims,
//! acks, failures (retry, block), renewals, releases, lease expiries, crashed
//! brokers, unblocks and resets, checked step by step against a reference
//! model of the queue store contract.
//!
//! After every step the store must agree with the model on every queue
//! (position, head, next, lag, retries, blocked), and every claim must hand
//! out exactly the pending events the model expects, never a queue another
//! broker holds a live lease on, and never move a position backwards except
//! by reset. At the end a healer drains everything: no event is lost.
//!
//! Cases: `PROPTEST_CASES` (default 40). Backends whose clock cannot be moved
//! run without lease expiries and with zero retry delays.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::support::pings;
use super::Backend;
use crate::queue::{Claim, Lease, Outcome, QueueFilter, Rejection, Settlement, Work};
use crate::store::Store;

const LEASE_SECS: u64 = 30;
const OWNERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u8,
        n: u8,
    },
    Correlate,
    Claim {
        owner: u8,
        queues: u8,
        events: u8,
    },
    Settle {
        owner: u8,
        pick: u8,
        keep: u8,
        kind: Kind,
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
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ack,
    Retry { delay: u8 },
    Block,
}

fn op() -> impl Strategy<Value = Op> {
    let owner = 0..OWNERS as u8;
    prop_oneof![
        4 => (0..3u8, 1..4u8).prop_map(|(stream, n)| Op::Append { stream, n }),
        3 => Just(Op::Correlate),
        5 => (owner.clone(), 1..4u8, 1..5u8).prop_map(|(owner, queues, events)| Op::Claim { owner, queues, events }),
        4 => (owner.clone(), any::<u8>(), any::<u8>()).prop_map(|(owner, pick, keep)| Op::Settle { owner, pick, keep, kind: Kind::Ack }),
        2 => (owner.clone(), any::<u8>(), any::<u8>(), 0..25u8).prop_map(|(owner, pick, keep, delay)| Op::Settle { owner, pick, keep, kind: Kind::Retry { delay } }),
        1 => (owner.clone(), any::<u8>(), any::<u8>()).prop_map(|(owner, pick, keep)| Op::Settle { owner, pick, keep, kind: Kind::Block }),
        1 => owner.clone().prop_map(|owner| Op::Renew { owner }),
        1 => (owner.clone(), any::<u8>()).prop_map(|(owner, pick)| Op::Release { owner, pick }),
        2 => (1..40u8).prop_map(|secs| Op::Advance { secs }),
        1 => owner.prop_map(|owner| Op::Crash { owner }),
        1 => (0..4u8).prop_map(|queue| Op::Unblock { queue }),
        1 => (0..4u8, any::<u8>()).prop_map(|(queue, back)| Op::Reset { queue, back }),
    ]
}

#[derive(Debug, Default, Clone)]
struct MQueue {
    work: Vec<i64>,
    position: i64,
    retries: u32,
    retry_at: Option<u64>,
    blocked: bool,
    token: i64,
    lease: Option<(usize, u64)>,
}

impl MQueue {
    fn pending(&self) -> Vec<i64> {
        self.work
            .iter()
            .copied()
            .filter(|&id| id > self.position)
            .collect()
    }
    fn live(&self, now: u64) -> bool {
        self.lease.is_some_and(|(_, exp)| exp > now)
    }
    fn claimable(&self, now: u64) -> bool {
        !self.blocked
            && !self.pending().is_empty()
            && !self.live(now)
            && self.retry_at.is_none_or(|t| t <= now)
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
}

struct Held {
    lease: Lease,
    events: Vec<i64>,
}

struct Model {
    manual: bool,
    now: u64,
    events: Vec<(i64, u8)>,
    correlated: usize,
    checkpoint: i64,
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

impl Model {
    fn queue_name(&self, i: u8) -> String {
        let names: Vec<&String> = self.queues.keys().collect();
        if names.is_empty() {
            return "q0".into();
        }
        names[i as usize % names.len()].clone()
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
            Op::Correlate => {
                let fresh = &self.events[self.correlated..];
                let Some(&(to, _)) = fresh.last() else {
                    return Ok(());
                };
                let mut work = Vec::new();
                for &(id, stream) in fresh {
                    for q in [format!("q{stream}"), "all".to_string()] {
                        work.push(Work {
                            stream: q,
                            event: id,
                            priority: 0,
                        });
                    }
                }
                let after = s.enqueue(&work, self.checkpoint, to).await.map_err(err)?;
                ensure!(
                    after == to,
                    "enqueue from the checkpoint returned {after}, expected {to}"
                );
                for w in work {
                    self.queues.entry(w.stream).or_default().work.push(w.event);
                }
                self.checkpoint = to;
                self.correlated = self.events.len();
            }
            Op::Claim {
                owner,
                queues,
                events,
            } => {
                let owner = owner as usize;
                let got = s
                    .claim(&Claim {
                        owner: format!("o{owner}"),
                        queues: queues as usize,
                        events: events as usize,
                        lease: Duration::from_secs(LEASE_SECS),
                    })
                    .await
                    .map_err(err)?;
                let claimable: Vec<String> = self
                    .queues
                    .iter()
                    .filter(|(_, q)| q.claimable(self.now))
                    .map(|(k, _)| k.clone())
                    .collect();
                ensure!(
                    got.len() == claimable.len().min(queues as usize),
                    "claim returned {} queues; the model has {} claimable ({claimable:?}), asked {queues}",
                    got.len(),
                    claimable.len()
                );
                let max_next = got
                    .iter()
                    .filter_map(|b| b.events.first().map(|e| e.id))
                    .max()
                    .unwrap_or(0);
                for b in &got {
                    let name = b.lease.stream.clone();
                    let q = self.queues.get_mut(&name).ok_or_else(|| {
                        TestCaseError::fail(format!("claimed unknown queue {name}"))
                    })?;
                    ensure!(
                        q.claimable(self.now),
                        "claimed {name}, which is not claimable: {q:?} at {}",
                        self.now
                    );
                    let pending = q.pending();
                    let want: Vec<i64> = pending.iter().copied().take(events as usize).collect();
                    let ids: Vec<i64> = b.events.iter().map(|e| e.id).collect();
                    ensure!(
                        ids == want,
                        "claim of {name} returned {ids:?}, expected {want:?}"
                    );
                    ensure!(
                        b.lease.position == q.position,
                        "lease position {} vs {}",
                        b.lease.position,
                        q.position
                    );
                    ensure!(
                        b.lease.retries == q.retries,
                        "lease retries {} vs {}",
                        b.lease.retries,
                        q.retries
                    );
                    ensure!(
                        b.lease.token > q.token,
                        "token did not increase on claim of {name}"
                    );
                    q.token = b.lease.token;
                    q.lease = Some((owner, self.now + LEASE_SECS));
                    self.held[owner].push(Held {
                        lease: b.lease.clone(),
                        events: ids,
                    });
                }
                // Oldest pending first: nothing left behind is older than what was taken.
                for name in claimable {
                    if !got.iter().any(|b| b.lease.stream == name) {
                        let next = self.queues[&name].pending()[0];
                        ensure!(next >= max_next || got.len() < queues as usize,
                            "{name} (next {next}) was passed over for a younger queue (up to {max_next})");
                    }
                }
            }
            Op::Settle {
                owner,
                pick,
                keep,
                kind,
            } => {
                let owner = owner as usize;
                if self.held[owner].is_empty() {
                    return Ok(());
                }
                let i = pick as usize % self.held[owner].len();
                let h = self.held[owner].remove(i);
                let k = keep as usize % (h.events.len() + 1);
                let to = if k == 0 {
                    h.lease.position
                } else {
                    h.events[k - 1]
                };
                let kind = match kind {
                    Kind::Retry { .. } if !self.manual => Kind::Retry { delay: 0 },
                    other => other,
                };
                let settlement = match kind {
                    Kind::Ack => Settlement::ack(&h.lease, to),
                    Kind::Retry { delay } => {
                        Settlement::retry(&h.lease, to, Duration::from_secs(delay as u64), "retry")
                    }
                    Kind::Block => Settlement::block(&h.lease, to, "block"),
                };
                let name = h.lease.stream.clone();
                let q = self.queues.get_mut(&name).expect("held queue exists");
                let predicted = q.check(&name, h.lease.token, self.now, Some(h.lease.position));
                let got = s
                    .settle(std::slice::from_ref(&settlement))
                    .await
                    .map_err(err)?;
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
                    match settlement.outcome {
                        Outcome::Ack => {
                            q.position = to;
                            q.retries = 0;
                            q.retry_at = None;
                        }
                        Outcome::Retry { delay, .. } => {
                            q.retries = crate::queue::retries_after_failure(
                                h.lease.position,
                                to,
                                q.retries,
                            );
                            q.position = to;
                            q.retry_at = Some(self.now + delay.as_secs());
                        }
                        Outcome::Block { .. } => {
                            q.retries = crate::queue::retries_after_failure(
                                h.lease.position,
                                to,
                                q.retries,
                            );
                            q.position = to;
                            q.retry_at = None;
                            q.blocked = true;
                        }
                    }
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
                        q.retries = 0;
                        q.retry_at = None;
                        q.lease = None;
                        let token = super::support::queue(s, &name).await.token;
                        ensure!(token > q.token, "unblock did not increase the token");
                        q.token = token;
                    }
                }
            }
            Op::Reset { queue, back } => {
                let name = self.queue_name(queue);
                let Some(q) = self.queues.get_mut(&name) else {
                    return Ok(());
                };
                let mut candidates = vec![0];
                candidates.extend(q.work.iter().copied().filter(|&id| id <= q.position));
                let to = candidates[back as usize % candidates.len()];
                let st = s.reset(&name, to).await.map_err(err)?;
                ensure!(st.token > q.token, "reset did not increase the token");
                q.token = st.token;
                q.position = to;
                q.retries = 0;
                q.retry_at = None;
                q.blocked = false;
                q.lease = None;
            }
        }
        self.compare(s, op).await
    }

    async fn compare(&self, s: &dyn Store, op: &Op) -> Result<(), TestCaseError> {
        let rows = s
            .queues(&QueueFilter::default())
            .await
            .map_err(|e| TestCaseError::fail(format!("queues: {e}")))?;
        ensure!(
            rows.len() == self.queues.len(),
            "after {op:?}: {} queues, model {}",
            rows.len(),
            self.queues.len()
        );
        for r in rows {
            let q = self
                .queues
                .get(&r.stream)
                .ok_or_else(|| TestCaseError::fail(format!("unknown queue {}", r.stream)))?;
            let pending = q.pending();
            let got = (
                r.position, r.head, r.next, r.lag, r.blocked, r.retries, r.token,
            );
            let want = (
                q.position,
                q.work.last().copied().unwrap_or(0),
                pending.first().copied(),
                pending.len() as u64,
                q.blocked,
                q.retries,
                q.token,
            );
            ensure!(
                got == want,
                "after {op:?}, queue {}: (position, head, next, lag, blocked, retries, token) store {got:?}, model {want:?}",
                r.stream
            );
        }
        Ok(())
    }

    /// Clears every lease and block, then drains: every queue must reach its head.
    async fn heal(&mut self, s: &dyn Store) -> Result<(), TestCaseError> {
        let err = |e: crate::Error| TestCaseError::fail(format!("heal: {e}"));
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for n in &names {
            let pos = self.queues[n].position;
            s.reset(n, pos).await.map_err(err)?;
        }
        for _ in 0..1000 {
            let got = s
                .claim(&Claim {
                    owner: "healer".into(),
                    queues: 100,
                    events: 1000,
                    lease: Duration::from_secs(LEASE_SECS),
                })
                .await
                .map_err(err)?;
            if got.is_empty() {
                break;
            }
            let acks: Vec<Settlement> = got
                .iter()
                .map(|b| {
                    Settlement::ack(&b.lease, b.events.last().map_or(b.lease.position, |e| e.id))
                })
                .collect();
            for r in s.settle(&acks).await.map_err(err)? {
                ensure!(r.is_ok(), "heal ack rejected: {r:?}");
            }
        }
        for r in s.queues(&QueueFilter::default()).await.map_err(err)? {
            ensure!(
                r.lag == 0 && r.position == r.head,
                "queue {} left behind: {r:?}",
                r.stream
            );
            let q = &self.queues[&r.stream];
            ensure!(
                r.head == q.work.last().copied().unwrap_or(0),
                "queue {} lost work",
                r.stream
            );
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
            let mut m = Model {
                manual: f.clock.is_manual(),
                now: 0,
                events: Vec::new(),
                correlated: 0,
                checkpoint: 0,
                queues: BTreeMap::new(),
                held: (0..OWNERS).map(|_| Vec::new()).collect(),
            };
            for op in &ops {
                m.step(&f, op).await?;
            }
            m.heal(&*f.store).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
