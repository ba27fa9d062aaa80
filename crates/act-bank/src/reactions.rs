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
    account_number, AccountEvent, Audit, AuditAction, Ledger, LedgerAction, Totals, TotalsAction,
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
        act::on!(AccountEvent {
            Deposited,
            Withdrawn
        })
        .named("audit")
        .to_raw(|e| account_number(&e.stream).map(|n| format!("audit-{n}")))
        .max_retries(max_retries)
        .backoff(backoff())
        .from_beginning()
        .handle(move |e, raw, ctx| async move { audit(e, raw, ctx, options).await }),
        act::on!(AccountEvent {
            Deposited,
            Withdrawn
        })
        .named("totals")
        .to_stream("totals")
        .max_retries(max_retries)
        .backoff(backoff())
        .from_beginning()
        .handle(|e, raw, ctx| async move { totals(e, raw, ctx).await }),
    ];
    if options.ledger {
        out.push(
            act::on!(AccountEvent {
                Deposited,
                Withdrawn
            })
            .named("ledger")
            .to_stream("ledger")
            .max_retries(max_retries)
            .backoff(backoff())
            .from_beginning()
            .handle(|e, raw, ctx| async move { ledger(e, raw, ctx).await }),
        );
    }
    out
}

async fn audit(
    e: AccountEvent,
    raw: Arc<Event>,
    ctx: Context,
    options: Options,
) -> Result<(), HandlerError> {
    simulated_failure(&e, ctx.attempt())?;
    let poisoned = matches!(e, AccountEvent::Deposited { poison: true, .. });
    if poisoned && options.crash_on_poison && !options.cured {
        eprintln!(
            "audit: poisoned deposit {}: aborting the process (--crash-on-poison)",
            raw.id
        );
        std::process::abort();
    }
    if !options.cured && poisoned {
        return Err(HandlerError::transient("poisoned deposit"));
    }
    ctx.act::<Audit>(ctx.stream(), &AuditAction::Record { source: raw.id })
        .await?;
    Ok(())
}

async fn totals(e: AccountEvent, raw: Arc<Event>, ctx: Context) -> Result<(), HandlerError> {
    simulated_failure(&e, ctx.attempt())?;
    let amount = match e {
        AccountEvent::Deposited { amount, .. } => amount,
        AccountEvent::Withdrawn { amount, .. } => -amount,
        _ => {
            return Err(HandlerError::permanent(format!(
                "event {} is neither a deposit nor a withdrawal",
                raw.id
            )))
        }
    };
    ctx.act::<Totals>(
        ctx.stream(),
        &TotalsAction::Add {
            source: raw.id,
            amount,
        },
    )
    .await?;
    Ok(())
}

async fn ledger(e: AccountEvent, raw: Arc<Event>, ctx: Context) -> Result<(), HandlerError> {
    simulated_failure(&e, ctx.attempt())?;
    ctx.act::<Ledger>(ctx.stream(), &LedgerAction::Post { source: raw.id })
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

fn simulated_failure(e: &AccountEvent, attempt: u32) -> Result<(), HandlerError> {
    let fail = match e {
        AccountEvent::Deposited { fail, .. } => *fail,
        _ => 0,
    };
    if attempt <= fail {
        return Err(HandlerError::transient(format!(
            "simulated failure: attempt {attempt} of the first {fail}"
        )));
    }
    Ok(())
}
