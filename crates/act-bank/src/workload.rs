//! The demo workload: open accounts, then a seeded random mix of deposits
//! and withdrawals, with a small share of failing deposits (`fail: 1..=2`)
//! and one poisoned deposit on each of a few accounts.
//!
//! Several writers run at once (tasks here, processes when several `act demo`
//! share a store). A concurrency conflict reloads and retries the action, as a
//! real client would; a withdrawal the balance cannot cover becomes a deposit,
//! so exactly `events` deposits and withdrawals are appended per run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use act::{Act, Actor, Error, Invocation, Snapshot, State};
use serde::Serialize;

use crate::model::{account, Account, AccountAction};

/// What to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Accounts `account-0` … `account-{n-1}`.
    pub accounts: usize,
    /// Deposits and withdrawals to append.
    pub events: usize,
    /// Seed of the random mix.
    pub seed: u64,
    /// Share of deposits that fail their first 1 or 2 handler attempts.
    pub fail_share: f64,
    /// Accounts that get one poisoned deposit (their audit queue ends blocked).
    pub poison: usize,
    /// Concurrent writers.
    pub writers: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            accounts: 100,
            events: 10_000,
            seed: 42,
            fail_share: 0.01,
            poison: 2,
            writers: 4,
        }
    }
}

/// What a run appended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Accounts opened by this run (already-open ones not counted).
    pub opened: u64,
    /// `Deposited` events appended.
    pub deposits: u64,
    /// `Withdrawn` events appended.
    pub withdrawals: u64,
    /// Deposits carrying `fail`.
    pub failing: u64,
    /// Deposits carrying `poison`.
    pub poisoned: u64,
    /// Withdrawals the balance refused (turned into deposits).
    pub refused: u64,
    /// Concurrency conflicts retried.
    pub conflicts: u64,
    /// Wall time of the run.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Report {
    /// Deposits and withdrawals appended.
    pub fn events(&self) -> u64 {
        self.deposits + self.withdrawals
    }

    fn add(&mut self, o: &Report) {
        self.opened += o.opened;
        self.deposits += o.deposits;
        self.withdrawals += o.withdrawals;
        self.failing += o.failing;
        self.poisoned += o.poisoned;
        self.refused += o.refused;
        self.conflicts += o.conflicts;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        account: usize,
        amount: i64,
        fail: u32,
        poison: bool,
    },
    Withdraw {
        account: usize,
        amount: i64,
    },
}

impl Workload {
    /// Checks the numbers make sense.
    pub fn validate(&self) -> act::Result<()> {
        if self.accounts == 0 {
            return Err(Error::InvalidInput("--accounts must be at least 1".into()));
        }
        if self.poison > self.accounts {
            return Err(Error::InvalidInput(format!(
                "--poison {} is more than --accounts {}",
                self.poison, self.accounts
            )));
        }
        if self.poison > self.events {
            return Err(Error::InvalidInput(format!(
                "--poison {} is more than --events {}",
                self.poison, self.events
            )));
        }
        if !(0.0..=1.0).contains(&self.fail_share) {
            return Err(Error::InvalidInput(format!(
                "--fail-share must be between 0 and 1, got {}",
                self.fail_share
            )));
        }
        Ok(())
    }

    fn plan(&self) -> Vec<Op> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut ops: Vec<Op> = (0..self.events)
            .map(|_| {
                let account = rng.usize(..self.accounts);
                let amount = rng.i64(1..=100);
                if rng.u8(..10) < 6 {
                    let fail = if rng.f64() < self.fail_share {
                        rng.u32(1..=2)
                    } else {
                        0
                    };
                    Op::Deposit {
                        account,
                        amount,
                        fail,
                        poison: false,
                    }
                } else {
                    Op::Withdraw { account, amount }
                }
            })
            .collect();
        let mut accounts: Vec<usize> = (0..self.accounts).collect();
        rng.shuffle(&mut accounts);
        let mut slots: Vec<usize> = (0..self.events).collect();
        rng.shuffle(&mut slots);
        for (&account, &slot) in accounts.iter().zip(&slots).take(self.poison) {
            ops[slot] = Op::Deposit {
                account,
                amount: rng.i64(1..=100),
                fail: 0,
                poison: true,
            };
        }
        ops
    }

    /// Appends the workload through `app`'s actions. `done` counts finished
    /// deposits and withdrawals as they happen (for a progress bar).
    pub async fn run(&self, app: &Act, done: Arc<AtomicU64>) -> act::Result<Report> {
        self.validate()?;
        let started = Instant::now();
        let writers = self.writers.max(1);
        let mut report = Report::default();

        let mut opens = tokio::task::JoinSet::new();
        for w in 0..writers {
            let app = app.clone();
            let mine: Vec<usize> = (w..self.accounts).step_by(writers).collect();
            opens.spawn(async move {
                let mut r = Report::default();
                for n in mine {
                    let open = AccountAction::Open;
                    let before =
                        act_retrying::<Account>(&app, &account(n), &open, None, &mut r).await?;
                    r.opened += before.events.len() as u64;
                }
                Ok::<_, Error>(r)
            });
        }
        join_into(&mut opens, &mut report).await?;

        let ops = self.plan();
        let mut shards: Vec<Vec<Op>> = vec![Vec::new(); writers];
        for (i, op) in ops.into_iter().enumerate() {
            shards[i % writers].push(op);
        }
        // One key per operation of this run: a retried operation keeps it.
        let run = format!("demo-{}-{:016x}", self.seed, fastrand::u64(..));
        let mut tasks = tokio::task::JoinSet::new();
        for (w, shard) in shards.into_iter().enumerate() {
            let app = app.clone();
            let done = done.clone();
            let run = run.clone();
            tasks.spawn(async move {
                let mut r = Report::default();
                for (i, op) in shard.into_iter().enumerate() {
                    apply(&app, op, format!("{run}:{w}:{i}"), &mut r).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(r)
            });
        }
        join_into(&mut tasks, &mut report).await?;
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

async fn join_into(
    set: &mut tokio::task::JoinSet<act::Result<Report>>,
    total: &mut Report,
) -> act::Result<()> {
    while let Some(r) = set.join_next().await {
        let r = r.map_err(|e| Error::InvalidInput(format!("a demo writer failed: {e}")))??;
        total.add(&r);
    }
    Ok(())
}

async fn apply(app: &Act, op: Op, key: String, r: &mut Report) -> act::Result<()> {
    match op {
        Op::Deposit {
            account: n,
            amount,
            fail,
            poison,
        } => {
            let action = AccountAction::Deposit {
                amount,
                fail,
                poison,
            };
            act_retrying::<Account>(app, &account(n), &action, Some(key), r).await?;
            r.deposits += 1;
            r.failing += u64::from(fail > 0);
            r.poisoned += u64::from(poison);
        }
        Op::Withdraw { account: n, amount } => {
            let withdraw = AccountAction::Withdraw { amount };
            match act_retrying::<Account>(app, &account(n), &withdraw, Some(format!("{key}:w")), r)
                .await
            {
                Ok(_) => r.withdrawals += 1,
                Err(Error::Rejected { .. }) => {
                    r.refused += 1;
                    let action = AccountAction::Deposit {
                        amount,
                        fail: 0,
                        poison: false,
                    };
                    act_retrying::<Account>(app, &account(n), &action, Some(format!("{key}:d")), r)
                        .await?;
                    r.deposits += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Runs an action, reloading and retrying on a concurrency conflict and
/// waiting out a store that is briefly unavailable. The idempotency key makes
/// the retry safe when the connection dropped after the store had applied
/// the append: the retry then returns what the first attempt wrote.
async fn act_retrying<S: State>(
    app: &Act,
    stream: &str,
    action: &S::Action,
    key: Option<String>,
    r: &mut Report,
) -> act::Result<Snapshot<S>> {
    let how = Invocation {
        actor: Actor {
            id: "demo".into(),
            name: "bank demo".into(),
        },
        idempotency_key: key,
        ..Default::default()
    };
    let mut unavailable = 0u32;
    loop {
        match app.execute::<S>(stream, action, how.clone()).await {
            Err(Error::Concurrency { .. }) => {
                r.conflicts += 1;
                tokio::task::yield_now().await;
            }
            Err(e) if e.is_transient() && unavailable < 20 => {
                unavailable += 1;
                tracing::warn!(error = %e, "store unavailable; retrying the action");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(unavailable))).await;
            }
            other => return other,
        }
    }
}
