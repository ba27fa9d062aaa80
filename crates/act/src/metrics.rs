//! Metrics: what a broker emits through the [`metrics`](https://docs.rs/metrics)
//! facade, and [`sample`], which reads store-wide gauges on demand.
//!
//! act never installs a recorder: the application does (a Prometheus
//! exporter, StatsD, …), before it starts brokers (each reaction takes its
//! histogram handles at its first handler call), and calls [`describe`]
//! once after it to publish the help texts. Without a recorder an emission costs a few nanoseconds and no
//! lock. Names follow the Prometheus conventions (`_total` counters, base
//! units: seconds). Labels are bounded: the only label is `reaction` (one
//! value per reaction of the application), never a queue, stream or event,
//! so the number of series does not grow with the data.
//!
//! The counters agree with the broker's [`crate::Stats`] (each named below);
//! they are summed over every broker of the process.
//!
//! # Emitted by brokers
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `act_reactions_delivered_total` | counter | `reaction` | handler calls that succeeded ([`crate::Stats::reactions`]) |
//! | `act_handler_failures_total` | counter | `reaction` | handler calls that failed: an error, a panic or a timeout |
//! | `act_retries_total` | counter | `reaction` | retries scheduled in the store after a failure of this reaction ([`crate::Stats::retries`]) |
//! | `act_blocks_total` | counter | `reaction` | queues blocked at an event of this reaction ([`crate::Stats::blocked`]; `reaction` is empty for an undecodable event of a schema-1 item) |
//! | `act_skips_total` | counter | `reaction` | events skipped after exhausting retries ([`crate::Stats::skipped`]) |
//! | `act_deferrals_total` | counter | `reaction` | handler calls that deferred their event ("not yet", [`crate::HandlerError::defer_for`]); not failures ([`crate::Stats::deferred`]) |
//! | `act_handler_timeouts_total` | counter | `reaction` | handler calls cancelled past their timeout ([`crate::Stats::timeouts`]) |
//! | `act_backfilled_total` | counter | `reaction` | events read by backfill and replay steps of this reaction (a step of a group counts for each reaction of it; [`crate::Stats::backfilled`] counts it once) |
//! | `act_events_acknowledged_total` | counter | — | events acknowledged ([`crate::Stats::events`]) |
//! | `act_claims_total` | counter | — | queues claimed ([`crate::Stats::claims`]) |
//! | `act_events_correlated_total` | counter | — | events correlated live ([`crate::Stats::correlated`]) |
//! | `act_settlements_rejected_total` | counter | — | settlements and releases the store refused because the lease was stale ([`crate::Stats::rejected`]) |
//! | `act_leases_lost_total` | counter | — | leases lost while a batch ran ([`crate::Stats::lost`]) |
//! | `act_store_errors_total` | counter | — | broker store calls that failed and were retried ([`crate::Stats::errors`]) |
//! | `act_handler_duration_seconds` | histogram | `reaction` | how long a handler call took |
//! | `act_commit_to_handler_seconds` | histogram | `reaction` | from the event's commit (`meta.created`, on the *store's* clock) to the handler's start (on the *broker's* clock): delivery latency, skewed by any difference between the two clocks, never negative |
//! | `act_timer_lateness_seconds` | histogram | — | how late a timer fired: from its time to the append of its event, on the store's clock as the broker knows it ([`crate::timer`]) |
//! | `act_leases_held` | gauge | — | leases the brokers of this process hold (claimed, not yet settled or released) |
//!
//! # Sampled by [`sample`]
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `act_reaction_lag` | gauge | `reaction` | the reaction's pending items over every queue (exact: enqueued for it, not yet acknowledged, blocked queues included; [`crate::QueueStore::pending_by_reaction`]), static and dynamic targets alike. Events not yet correlated for it are in `act_correlation_lag` and `act_backfill_remaining` |
//! | `act_queues_waiting` | gauge | `reaction` | pending queues whose first event has an item for this reaction and that no broker that has it has claimed yet: during a rolling deploy, the queues waiting for the new version ([`crate::QueueState::waiting`]); above 0 for long means no running broker has the reaction |
//! | `act_events_pending` | gauge | — | events pending over all queues (exact: the sum of [`crate::QueueState::lag`]) |
//! | `act_queues_pending` | gauge | — | queues with pending events |
//! | `act_queues_blocked` | gauge | — | queues blocked until an operator unblocks them |
//! | `act_correlation_lag` | gauge | — | the log's head minus the live correlation checkpoint (the highest checkpoint of the sampled reactions): events not yet correlated |
//! | `act_backfill_remaining` | gauge | `reaction` | the live checkpoint minus this reaction's checkpoint: ids of the log it still has to read to catch up (an upper bound on events; 0 when live) |

use std::collections::HashMap;
use std::time::Duration;

use crate::error::Result;
use crate::event::Event;
use crate::queue::QueueFilter;
use crate::store::Store;

/// Handler calls that succeeded (counter; label `reaction`).
pub const REACTIONS_DELIVERED: &str = "act_reactions_delivered_total";
/// Handler calls that failed (counter; label `reaction`).
pub const HANDLER_FAILURES: &str = "act_handler_failures_total";
/// Retries scheduled (counter; label `reaction`).
pub const RETRIES: &str = "act_retries_total";
/// Handler calls that deferred their event (counter; label `reaction`).
pub const DEFERRALS: &str = "act_deferrals_total";
/// Queues blocked (counter; label `reaction`).
pub const BLOCKS: &str = "act_blocks_total";
/// Events skipped after exhausting retries (counter; label `reaction`).
pub const SKIPS: &str = "act_skips_total";
/// Handler calls cancelled past their timeout (counter; label `reaction`).
pub const HANDLER_TIMEOUTS: &str = "act_handler_timeouts_total";
/// Events read by backfill and replay steps (counter; label `reaction`).
pub const BACKFILLED: &str = "act_backfilled_total";
/// Events acknowledged (counter).
pub const EVENTS_ACKNOWLEDGED: &str = "act_events_acknowledged_total";
/// Queues claimed (counter).
pub const CLAIMS: &str = "act_claims_total";
/// Events correlated live (counter).
pub const EVENTS_CORRELATED: &str = "act_events_correlated_total";
/// Settlements and releases refused for a stale lease (counter).
pub const SETTLEMENTS_REJECTED: &str = "act_settlements_rejected_total";
/// Leases lost while a batch ran (counter).
pub const LEASES_LOST: &str = "act_leases_lost_total";
/// Broker store calls that failed (counter).
pub const STORE_ERRORS: &str = "act_store_errors_total";
/// Handler call duration in seconds (histogram; label `reaction`).
pub const HANDLER_DURATION: &str = "act_handler_duration_seconds";
/// Commit (store clock) to handler start (broker clock) in seconds
/// (histogram; label `reaction`).
pub const COMMIT_TO_HANDLER: &str = "act_commit_to_handler_seconds";
/// How late timers fired, in seconds (histogram).
pub const TIMER_LATENESS: &str = "act_timer_lateness_seconds";
/// Leases held by this process's brokers (gauge).
pub const LEASES_HELD: &str = "act_leases_held";
/// A reaction's pending items over every queue (gauge; label `reaction`;
/// [`sample`]).
pub const REACTION_LAG: &str = "act_reaction_lag";
/// Queues waiting for a broker that has a reaction (gauge; label
/// `reaction`; [`sample`]).
pub const QUEUES_WAITING: &str = "act_queues_waiting";
/// Events pending over all queues (gauge; [`sample`]).
pub const EVENTS_PENDING: &str = "act_events_pending";
/// Queues with pending events (gauge; [`sample`]).
pub const QUEUES_PENDING: &str = "act_queues_pending";
/// Blocked queues (gauge; [`sample`]).
pub const QUEUES_BLOCKED: &str = "act_queues_blocked";
/// Head minus the live correlation checkpoint (gauge; [`sample`]).
pub const CORRELATION_LAG: &str = "act_correlation_lag";
/// Live checkpoint minus a reaction's checkpoint (gauge; label `reaction`;
/// [`sample`]).
pub const BACKFILL_REMAINING: &str = "act_backfill_remaining";

/// The label every per-reaction metric carries.
pub const REACTION_LABEL: &str = "reaction";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of values.
    Histogram,
}

/// One metric: for exporters and docs that list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// Its unit, when it has one.
    pub unit: Option<::metrics::Unit>,
    /// What it means (the help text).
    pub help: &'static str,
}

const R: &[&str] = &[REACTION_LABEL];

/// Every metric act emits or samples, in the order of the module docs.
pub const ALL: &[Metric] = &[
    m(
        REACTIONS_DELIVERED,
        Kind::Counter,
        R,
        None,
        "Handler calls that succeeded.",
    ),
    m(
        HANDLER_FAILURES,
        Kind::Counter,
        R,
        None,
        "Handler calls that failed (error, panic or timeout).",
    ),
    m(
        RETRIES,
        Kind::Counter,
        R,
        None,
        "Retries scheduled in the store after a handler failure.",
    ),
    m(
        BLOCKS,
        Kind::Counter,
        R,
        None,
        "Queues blocked until an operator unblocks them.",
    ),
    m(
        SKIPS,
        Kind::Counter,
        R,
        None,
        "Events skipped after exhausting retries.",
    ),
    m(
        DEFERRALS,
        Kind::Counter,
        R,
        None,
        "Handler calls that deferred their event to a later time (not failures).",
    ),
    m(
        HANDLER_TIMEOUTS,
        Kind::Counter,
        R,
        None,
        "Handler calls cancelled past their timeout.",
    ),
    m(
        BACKFILLED,
        Kind::Counter,
        R,
        None,
        "Events read by backfill and replay steps.",
    ),
    m(
        EVENTS_ACKNOWLEDGED,
        Kind::Counter,
        &[],
        None,
        "Events acknowledged.",
    ),
    m(CLAIMS, Kind::Counter, &[], None, "Queues claimed."),
    m(
        EVENTS_CORRELATED,
        Kind::Counter,
        &[],
        None,
        "Events correlated live.",
    ),
    m(
        SETTLEMENTS_REJECTED,
        Kind::Counter,
        &[],
        None,
        "Settlements and releases refused for a stale lease.",
    ),
    m(
        LEASES_LOST,
        Kind::Counter,
        &[],
        None,
        "Leases lost while a batch ran.",
    ),
    m(
        STORE_ERRORS,
        Kind::Counter,
        &[],
        None,
        "Broker store calls that failed and were retried.",
    ),
    m(
        HANDLER_DURATION,
        Kind::Histogram,
        R,
        Some(::metrics::Unit::Seconds),
        "Handler call duration.",
    ),
    m(
        COMMIT_TO_HANDLER,
        Kind::Histogram,
        R,
        Some(::metrics::Unit::Seconds),
        "From an event's commit (store clock) to its handler's start (broker clock).",
    ),
    m(
        TIMER_LATENESS,
        Kind::Histogram,
        &[],
        Some(::metrics::Unit::Seconds),
        "How late a timer fired: from its time to the append of its event (store clock).",
    ),
    m(
        LEASES_HELD,
        Kind::Gauge,
        &[],
        None,
        "Leases held by this process's brokers.",
    ),
    m(
        REACTION_LAG,
        Kind::Gauge,
        R,
        None,
        "The reaction's pending items over every queue.",
    ),
    m(
        QUEUES_WAITING,
        Kind::Gauge,
        R,
        None,
        "Queues waiting for a broker that has the reaction.",
    ),
    m(
        EVENTS_PENDING,
        Kind::Gauge,
        &[],
        None,
        "Events pending over all queues.",
    ),
    m(
        QUEUES_PENDING,
        Kind::Gauge,
        &[],
        None,
        "Queues with pending events.",
    ),
    m(QUEUES_BLOCKED, Kind::Gauge, &[], None, "Blocked queues."),
    m(
        CORRELATION_LAG,
        Kind::Gauge,
        &[],
        None,
        "Log head minus the live correlation checkpoint.",
    ),
    m(
        BACKFILL_REMAINING,
        Kind::Gauge,
        R,
        None,
        "Live checkpoint minus the reaction's checkpoint.",
    ),
];

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    unit: Option<::metrics::Unit>,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        unit,
        help,
    }
}

/// Publishes the help text and unit of every metric to the installed
/// recorder. Call it once, after installing the recorder.
pub fn describe() {
    for d in ALL {
        match (d.kind, d.unit) {
            (Kind::Counter, Some(u)) => ::metrics::describe_counter!(d.name, u, d.help),
            (Kind::Counter, None) => ::metrics::describe_counter!(d.name, d.help),
            (Kind::Gauge, Some(u)) => ::metrics::describe_gauge!(d.name, u, d.help),
            (Kind::Gauge, None) => ::metrics::describe_gauge!(d.name, d.help),
            (Kind::Histogram, Some(u)) => ::metrics::describe_histogram!(d.name, u, d.help),
            (Kind::Histogram, None) => ::metrics::describe_histogram!(d.name, d.help),
        }
    }
}

/// The store-wide figures [`sample`] read (and set as gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// The log's head.
    pub head: i64,
    /// Per sampled reaction: its pending items over every queue.
    pub reaction_lag: Vec<(String, u64)>,
    /// Per sampled reaction: the queues waiting for a broker that has it.
    pub queues_waiting: Vec<(String, u64)>,
    /// Events pending over all queues.
    pub events_pending: u64,
    /// Queues with pending events.
    pub queues_pending: u64,
    /// Blocked queues.
    pub queues_blocked: u64,
    /// Head minus the live checkpoint.
    pub correlation_lag: u64,
    /// Per reaction: the live checkpoint minus its checkpoint.
    pub backfill_remaining: Vec<(String, u64)>,
}

/// Queues read per page by [`sample`].
const PAGE: usize = 1000;

/// Reads the store-wide gauges and sets them (see the module docs) for
/// `reactions`, the active subscriptions named (all active ones when
/// empty). An exporter calls it before each scrape (e.g. every 10 s), from
/// one process: the figures are the store's, not a broker's.
///
/// Costs `4 + ⌈pending queues / 1000⌉ + ⌈blocked queues / 1000⌉` read-only
/// store calls (head, subscriptions, pending items per reaction, a page
/// walk over the queues with pending events and one over the blocked
/// ones); nothing is locked. On SQLite and PostgreSQL the per-reaction
/// count reads every pending item once (a backlog of a million items costs
/// a fraction of a second per sample), on Redis one small hash.
pub async fn sample(store: &dyn Store, reactions: &[String]) -> Result<Sample> {
    let head = store.head().await?;
    let subs: Vec<_> = store
        .subscriptions()
        .await?
        .into_iter()
        .filter(|s| s.retired.is_none())
        .filter(|s| reactions.is_empty() || reactions.contains(&s.name))
        .collect();
    let live = subs.iter().map(|s| s.checkpoint).max().unwrap_or(head);
    let mut out = Sample {
        head,
        correlation_lag: head.saturating_sub(live).max(0) as u64,
        backfill_remaining: subs
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    live.saturating_sub(s.checkpoint).max(0) as u64,
                )
            })
            .collect(),
        ..Sample::default()
    };
    let pending: HashMap<String, u64> = store.pending_by_reaction().await?.into_iter().collect();
    let mut waiting: HashMap<String, u64> = HashMap::new();
    let mut filter = QueueFilter {
        pending: true,
        limit: Some(PAGE),
        ..QueueFilter::default()
    };
    loop {
        let page = store.queues(&filter).await?;
        for q in &page {
            out.events_pending += q.lag;
            out.queues_pending += u64::from(q.lag > 0);
            if let Some(w) = &q.waiting {
                *waiting.entry(w.clone()).or_default() += 1;
            }
        }
        if page.len() < PAGE {
            break;
        }
        filter.after = page.last().map(|q| q.stream.clone());
    }
    let mut filter = QueueFilter {
        blocked: true,
        limit: Some(PAGE),
        ..QueueFilter::default()
    };
    loop {
        let page = store.queues(&filter).await?;
        out.queues_blocked += page.len() as u64;
        if page.len() < PAGE {
            break;
        }
        filter.after = page.last().map(|q| q.stream.clone());
    }
    out.reaction_lag = subs
        .iter()
        .map(|s| (s.name.clone(), pending.get(&s.name).copied().unwrap_or(0)))
        .collect();
    out.queues_waiting = subs
        .iter()
        .map(|s| (s.name.clone(), waiting.get(&s.name).copied().unwrap_or(0)))
        .collect();
    for (r, lag) in &out.reaction_lag {
        ::metrics::gauge!(REACTION_LAG, REACTION_LABEL => r.clone()).set(*lag as f64);
    }
    for (r, n) in &out.queues_waiting {
        ::metrics::gauge!(QUEUES_WAITING, REACTION_LABEL => r.clone()).set(*n as f64);
    }
    for (r, n) in &out.backfill_remaining {
        ::metrics::gauge!(BACKFILL_REMAINING, REACTION_LABEL => r.clone()).set(*n as f64);
    }
    ::metrics::gauge!(EVENTS_PENDING).set(out.events_pending as f64);
    ::metrics::gauge!(QUEUES_PENDING).set(out.queues_pending as f64);
    ::metrics::gauge!(QUEUES_BLOCKED).set(out.queues_blocked as f64);
    ::metrics::gauge!(CORRELATION_LAG).set(out.correlation_lag as f64);
    Ok(out)
}

/// Creates every counter series at 0 (each per-reaction one for each of
/// `reactions`), so a scrape shows them before anything happened and rates
/// start from a known zero (Prometheus' advice for known label sets).
pub(crate) fn zero<'a>(reactions: impl IntoIterator<Item = &'a str>) {
    for r in reactions {
        for name in [
            REACTIONS_DELIVERED,
            HANDLER_FAILURES,
            RETRIES,
            BLOCKS,
            SKIPS,
            DEFERRALS,
            HANDLER_TIMEOUTS,
            BACKFILLED,
        ] {
            ::metrics::counter!(name, REACTION_LABEL => r.to_string()).increment(0);
        }
    }
    for name in [
        EVENTS_ACKNOWLEDGED,
        CLAIMS,
        EVENTS_CORRELATED,
        SETTLEMENTS_REJECTED,
        LEASES_LOST,
        STORE_ERRORS,
    ] {
        ::metrics::counter!(name).increment(0);
    }
    ::metrics::gauge!(LEASES_HELD).increment(0.0);
}

/// Adds `n` to a counter labelled with `reaction` (nothing for 0).
pub(crate) fn count_for(name: &'static str, reaction: &str, n: u64) {
    if n > 0 {
        ::metrics::counter!(name, REACTION_LABEL => reaction.to_string()).increment(n);
    }
}

/// Adds `n` to an unlabelled counter (nothing for 0).
pub(crate) fn count(name: &'static str, n: u64) {
    if n > 0 {
        ::metrics::counter!(name).increment(n);
    }
}

/// Moves the leases-held gauge.
pub(crate) fn leases_held(delta: i64) {
    match delta {
        0 => {}
        d if d > 0 => ::metrics::gauge!(LEASES_HELD).increment(d as f64),
        d => ::metrics::gauge!(LEASES_HELD).decrement(-d as f64),
    }
}

/// A reaction's histogram handles, made once (at its first handler call)
/// instead of looked up by name and label at every call: the lookup, and
/// the label's allocation, cost more than the recording.
#[derive(Debug, Clone)]
pub(crate) struct ReactionHistograms {
    duration: ::metrics::Histogram,
    latency: ::metrics::Histogram,
}

impl ReactionHistograms {
    fn new(reaction: &str) -> Self {
        ReactionHistograms {
            duration: ::metrics::histogram!(HANDLER_DURATION, REACTION_LABEL => reaction.to_string()),
            latency: ::metrics::histogram!(COMMIT_TO_HANDLER, REACTION_LABEL => reaction.to_string()),
        }
    }
}

fn histograms(reaction: &crate::reaction::Reaction) -> &ReactionHistograms {
    reaction
        .histograms
        .get_or_init(|| ReactionHistograms::new(reaction.name()))
}

pub(crate) fn handler_duration(reaction: &crate::reaction::Reaction, took: Duration) {
    histograms(reaction).duration.record(took.as_secs_f64());
}

pub(crate) fn timer_fired(at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) {
    let late = (now - at).to_std().unwrap_or_default();
    ::metrics::histogram!(TIMER_LATENESS).record(late.as_secs_f64());
}

pub(crate) fn commit_to_handler(reaction: &crate::reaction::Reaction, event: &Event) {
    let since = (chrono::Utc::now() - event.meta.created)
        .to_std()
        .unwrap_or_default();
    histograms(reaction).latency.record(since.as_secs_f64());
}
