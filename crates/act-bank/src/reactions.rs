//! The bank's reactions.
//!
//! - `audit` (dynamic): every `Deposited`/`Withdrawn` on `account-{n}` goes to
//!   queue `audit-{n}`, whose handler appends `Recorded { source }` there.
//! - `totals` (static): the same events go to queue `totals`, whose handler
//!   appends `Totaled { source, total }` with the running sum.
//! - `ledger` (static, version 2 of the demo, [`Options::ledger`]): the same
//!   events go to queue `ledger`, whose handler appends `Posted { source }`.
//!   Added to a running bank, it replays the history first.
//!
//! All three start from the beginning of the log: they are projections, and
//! the demo appends before it delivers.
//!
//! A deposit carrying `fail: k` makes both handlers fail their first `k`
//! attempts (the attempt number comes from the queue's stored retry count, so
//! it holds across brokers and restarts); `poison: true` makes the audit
//! handler fail every time, so that `audit-{n}` ends blocked.

use std::sync::Arc;
use std::time::Duration;

use act::{Act, Backoff, Context, Event, HandlerError, Reaction, Store};

use crate::model::{
    account_number, Audit, AuditAction, Ledger, LedgerAction, Totals, TotalsAction,
};

/// Retries before a queue blocks (a `fail: k` deposit needs `k <= MAX_RETRIES`).
pub const MAX_RETRIES: u32 = 3;

/// Backoff of both reactions: quick, so the demo exercises retries in
/// milliseconds.
pub fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        factor: 2.0,
        cap: Duration::from_secs(2),
        jitter: 0.2,
    }
}

/// How the bank's handlers behave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The fix for poisoned deposits is deployed: the audit handler records
    /// them like any other deposit. Models an operator fixing the cause of a
    /// blocked queue before `act unblock`.
    pub cured: bool,
    /// Version 2 of the demo: the `ledger` reaction is registered too.
    pub ledger: bool,
    /// A poisoned deposit makes the audit handler abort its process instead
    /// of failing (a crash loop: the queue must end blocked by lease
    /// expiries). For tests of workers that die in a handler.
    pub crash_on_poison: bool,
    /// Retries before a queue blocks (default [`MAX_RETRIES`]). Every lease
    /// that ends without a settlement counts as a failed attempt, so a test
    /// that kills workers many times a second raises it.
    pub max_retries: Option<u32>,
}

/// The bank on `store`, with both reactions registered.
pub fn app(store: Arc<dyn Store>) -> act::Result<Act> {
    app_with(store, Options::default())
}

/// The bank with explicit handler options.
pub fn app_with(store: Arc<dyn Store>, options: Options) -> act::Result<Act> {
    Act::builder(store).reactions(reactions(options)).build()
}

/// The two reactions.
pub fn reactions(options: Options) -> Vec<Reaction> {
    let max_retries = options.max_retries.unwrap_or(MAX_RETRIES);
    let mut out = vec![
        Reaction::on("Deposited")
            .also("Withdrawn")
            .named("audit")
            .to(|e| account_number(&e.stream).map(|n| format!("audit-{n}")))
            .max_retries(max_retries)
            .backoff(backoff())
            .from_beginning()
            .handle(move |e, ctx| async move { audit(e, ctx, options).await }),
        Reaction::on("Deposited")
            .also("Withdrawn")
            .named("totals")
            .to_stream("totals")
            .max_retries(max_retries)
            .backoff(backoff())
            .from_beginning()
            .handle(|e, ctx| async move { totals(e, ctx).await }),
    ];
    if options.ledger {
        out.push(
            Reaction::on("Deposited")
                .also("Withdrawn")
                .named("ledger")
                .to_stream("ledger")
                .max_retries(max_retries)
                .backoff(backoff())
                .from_beginning()
                .handle(|e, ctx| async move { ledger(e, ctx).await }),
        );
    }
    out
}

async fn audit(e: Arc<Event>, ctx: Context, options: Options) -> Result<(), HandlerError> {
    simulated_failure(&e, ctx.attempt())?;
    let poisoned = e.data.get("poison").and_then(|v| v.as_bool()) == Some(true);
    if poisoned && options.crash_on_poison && !options.cured {
        eprintln!(
            "audit: poisoned deposit {}: aborting the process (--crash-on-poison)",
            e.id
        );
        std::process::abort();
    }
    if !options.cured && poisoned {
        return Err(HandlerError::transient("poisoned deposit"));
    }
    ctx.act::<Audit>(ctx.stream(), &AuditAction::Record { source: e.id })
        .await?;
    Ok(())
}

async fn totals(e: Arc<Event>, ctx: Context) -> Result<(), HandlerError> {
    simulated_failure(&e, ctx.attempt())?;
    let amount = signed_amount(&e).ok_or_else(|| {
        HandlerError::permanent(format!("event {} has no integer `amount`", e.id))
    })?;
    ctx.act::<Totals>(
        ctx.stream(),
        &TotalsAction::Add {
            source: e.id,
            amount,
        },
    )
    .await?;
    Ok(())
}

async fn ledger(e: Arc<Event>, ctx: Context) -> Result<(), HandlerError> {
    simulated_failure(&e, ctx.attempt())?;
    ctx.act::<Ledger>(ctx.stream(), &LedgerAction::Post { source: e.id })
        .await?;
    Ok(())
}

/// The amount of a `Deposited` (positive) or `Withdrawn` (negative) event.
pub fn signed_amount(e: &Event) -> Option<i64> {
    let amount = e.data.get("amount")?.as_i64()?;
    match e.name.as_str() {
        "Deposited" => Some(amount),
        "Withdrawn" => Some(-amount),
        _ => None,
    }
}

fn simulated_failure(e: &Event, attempt: u32) -> Result<(), HandlerError> {
    let fail = e.data.get("fail").and_then(|v| v.as_u64()).unwrap_or(0);
    if u64::from(attempt) <= fail {
        return Err(HandlerError::transient(format!(
            "simulated failure: attempt {attempt} of the first {fail}"
        )));
    }
    Ok(())
}
