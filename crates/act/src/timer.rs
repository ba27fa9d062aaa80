//! Durable timers: an event appended at a time, recorded in the log.
//!
//! A timer has a key. Its whole life is one stream, `act.timer.{key}`:
//! - [`crate::Act::schedule`] appends `act.TimerScheduled` (the time and
//!   the event to append then); scheduling a key again replaces its pending
//!   time and event;
//! - [`crate::Act::cancel_timer`] appends `act.TimerCancelled`;
//! - when the time comes, a broker appends the timer's own event to the
//!   same stream, once: that event is the firing, and what the
//!   application's reactions listen to.
//!
//! So timers are auditable (`act events --stream 'act.timer.*'`) and
//! replayable, and survive restarts: they are data in the store, not tasks
//! in a process. The firing is done by a built-in reaction, `act.timers`,
//! that an application turns on with [`crate::ActBuilder::timers`]. It
//! routes each schedule to a queue of its own and *defers* it
//! ([`crate::HandlerError::defer_until`]) until its time, so any broker,
//! in any process, fires it, after crashes and restarts, and many timers
//! cost nothing while they wait (one queue row each, no task, no poll of
//! their own).
//!
//! # Guarantees
//! - **At most once per key.** The firing is appended with the version the
//!   broker read, so a cancel or a new schedule that lands first wins (the
//!   broker reads again and does not fire), and with an idempotency key, so
//!   a redelivered firing appends nothing. A key that fired never fires
//!   again: scheduling it is refused ([`crate::Error::Rejected`]).
//! - **A cancelled timer never fires**, whatever the race with its time.
//! - **Not before its time on the store's clock** (as the broker knows it,
//!   [`crate::Context::now`]), and **late** by the broker's claim latency:
//!   the broker that deferred the schedule claims it again at its time
//!   (docs/applications.md and BENCH.md give the measured lateness); after
//!   that broker's crash, another broker finds it at its next poll (1 s by
//!   default). A time is a UTC instant: [`Timer::after`] reads this
//!   process's clock, so give [`Timer::at`] a time derived from the store's
//!   (an event's `created`) where machine clocks may disagree.
//! - A timer whose time is past when it is scheduled fires at once.
//!
//! ```
//! # async fn demo() -> act::Result<()> {
//! use std::time::Duration;
//! use act::{timer::Timer, Act, Message, MemoryStore};
//! let act = Act::builder(std::sync::Arc::new(MemoryStore::new())).timers().build()?;
//! let reminder = Message::new("ReminderDue", serde_json::json!({"order": 42}));
//! act.schedule(Timer::after("order-42-reminder", Duration::from_secs(86_400), reminder))
//!     .await?;
//! assert!(act.cancel_timer("order-42-reminder").await?);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::{Append, Event, ExpectedVersion, Message};
use crate::query::Query;
use crate::reaction::{HandlerError, Reaction};
use crate::store::Store;

/// The prefix of every timer's stream: `act.timer.{key}`.
pub const STREAM_PREFIX: &str = "act.timer.";
/// The event that schedules (or reschedules) a timer.
pub const SCHEDULED: &str = "act.TimerScheduled";
/// The event that cancels a timer.
pub const CANCELLED: &str = "act.TimerCancelled";
/// The built-in reaction that fires timers.
pub const REACTION: &str = "act.timers";

/// Longest key, in bytes: the stream name and the queue of a schedule
/// (`{stream}#{event id}`) must stay within [`crate::limits::MAX_NAME_BYTES`].
pub const MAX_KEY_BYTES: usize = 960;

/// How often a schedule or cancel reads again after a concurrent change of
/// the same timer before it gives up with the conflict.
const ATTEMPTS: usize = 8;

/// A timer to schedule: a key, a time and the event to append then.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    key: String,
    at: DateTime<Utc>,
    message: Message,
}

impl Timer {
    /// Appends `message` to the timer's stream at `at`.
    pub fn at(key: impl Into<String>, at: DateTime<Utc>, message: Message) -> Self {
        Timer {
            key: key.into(),
            at,
            message,
        }
    }

    /// Appends `message` to the timer's stream `delay` from now (this
    /// process's clock).
    pub fn after(key: impl Into<String>, delay: Duration, message: Message) -> Self {
        let at = crate::clock::add(Utc::now(), delay);
        Timer::at(key, at, message)
    }

    /// Its key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When it fires.
    pub fn time(&self) -> DateTime<Utc> {
        self.at
    }

    /// The event it appends.
    pub fn message(&self) -> &Message {
        &self.message
    }
}

/// Where a timer is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerStatus {
    /// Never scheduled.
    Unknown,
    /// Waits for its time.
    Pending {
        /// When it fires.
        at: DateTime<Utc>,
        /// The id of the schedule event that set it.
        scheduled: i64,
    },
    /// Cancelled before it fired (it may be scheduled again).
    Cancelled {
        /// The id of the cancel event.
        cancelled: i64,
    },
    /// Fired: its event was appended (the key cannot be scheduled again).
    Fired {
        /// The id of the appended event.
        event: i64,
    },
}

/// The stream of the timer `key`.
pub fn stream(key: &str) -> String {
    format!("{STREAM_PREFIX}{key}")
}

/// The data of a schedule event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scheduled {
    key: String,
    at: DateTime<Utc>,
    name: String,
    #[serde(default)]
    data: Value,
}

/// A timer's stream, folded.
struct Read {
    status: TimerStatus,
    version: Option<i64>,
}

async fn read(store: &dyn Store, key: &str) -> Result<Read> {
    let events = store.query(&Query::new().stream(stream(key))).await?;
    let mut status = TimerStatus::Unknown;
    for e in &events {
        status = match e.name.as_str() {
            SCHEDULED => match serde_json::from_value::<Scheduled>(e.data.clone()) {
                Ok(s) => TimerStatus::Pending {
                    at: s.at,
                    scheduled: e.id,
                },
                Err(err) => return Err(Error::decode(format!("timer event {}", e.id), err)),
            },
            CANCELLED => TimerStatus::Cancelled { cancelled: e.id },
            _ => TimerStatus::Fired { event: e.id },
        };
    }
    Ok(Read {
        status,
        version: events.last().map(|e| e.version),
    })
}

/// The status of the timer `key`. One query of its stream.
pub async fn status(store: &dyn Store, key: &str) -> Result<TimerStatus> {
    Ok(read(store, key).await?.status)
}

fn check(timer: &Timer) -> Result<()> {
    crate::limits::check_name("a timer key", &timer.key)?;
    if timer.key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "timer key is {} bytes long: the limit is {MAX_KEY_BYTES} bytes",
            timer.key.len()
        )));
    }
    crate::limits::check_name("a timer's event name", &timer.message.name)?;
    if [SCHEDULED, CANCELLED, crate::state::SNAPSHOT].contains(&timer.message.name.as_str()) {
        return Err(Error::InvalidInput(format!(
            "a timer cannot append `{}`: the name is reserved",
            timer.message.name
        )));
    }
    crate::limits::check_json("a timer's event data", &timer.message.data)
}

/// The append that schedules `timer` on a stream read as `read`.
fn schedule_append(timer: &Timer, read: &Read) -> Result<Append> {
    let stream = stream(&timer.key);
    if let TimerStatus::Fired { event } = read.status {
        return Err(Error::Rejected {
            stream,
            action: "schedule".into(),
            reason: format!(
                "timer `{}` already fired (event {event}): a key fires at most once",
                timer.key
            ),
        });
    }
    let data = Scheduled {
        key: timer.key.clone(),
        at: timer.at,
        name: timer.message.name.clone(),
        data: timer.message.data.clone(),
    };
    let data = serde_json::to_value(&data).map_err(|e| Error::decode("a timer", e))?;
    let mut append = Append::new(stream, vec![Message::new(SCHEDULED, data)]);
    append.expected = ExpectedVersion::after(read.version);
    Ok(append)
}

/// Who writes a timer's events: the application or a reaction's context.
pub(crate) enum Writer<'a> {
    App(&'a dyn Store),
    Reaction(&'a Context),
}

impl Writer<'_> {
    fn store(&self) -> &dyn Store {
        match self {
            Writer::App(s) => *s,
            Writer::Reaction(ctx) => &**ctx.store(),
        }
    }

    async fn append(&self, append: Append) -> Result<Vec<Arc<Event>>> {
        match self {
            Writer::App(s) => s.append(append).await,
            Writer::Reaction(ctx) => ctx.append(append).await,
        }
    }
}

/// Schedules (or reschedules) `timer`; returns its schedule event.
pub(crate) async fn schedule(w: Writer<'_>, timer: &Timer) -> Result<Arc<Event>> {
    check(timer)?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let read = read(w.store(), &timer.key).await?;
        let append = schedule_append(timer, &read)?;
        match w.append(append).await {
            Ok(mut events) => {
                return events.pop().ok_or_else(|| {
                    Error::decode("a timer's schedule", "the store returned no event")
                })
            }
            Err(e @ Error::Concurrency { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidInput("no attempt made".into())))
}

/// Cancels the timer `key`: true when a pending timer was cancelled, false
/// when there was none (never scheduled, already cancelled, fired).
pub(crate) async fn cancel(w: Writer<'_>, key: &str) -> Result<bool> {
    crate::limits::check_name("a timer key", key)?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let read = read(w.store(), key).await?;
        if !matches!(read.status, TimerStatus::Pending { .. }) {
            return Ok(false);
        }
        let data = serde_json::json!({ "key": key });
        let mut append = Append::new(stream(key), vec![Message::new(CANCELLED, data)]);
        append.expected = ExpectedVersion::after(read.version);
        match w.append(append).await {
            Ok(_) => return Ok(true),
            Err(e @ Error::Concurrency { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidInput("no attempt made".into())))
}

/// The reaction that fires timers ([`crate::ActBuilder::timers`]). Each
/// schedule gets a queue of its own (`{stream}#{event id}`), so a timer
/// rescheduled to an earlier time is not held behind its old schedule.
pub(crate) fn reaction() -> Reaction {
    Reaction::on(SCHEDULED)
        .named(REACTION)
        .to(|e| Some(format!("{}#{}", e.stream, e.id)))
        .from_beginning()
        .handle(fire)
}

/// Fires the schedule `event` when it is its timer's current one and its
/// time has come; defers it until then; does nothing when it was cancelled
/// or replaced.
async fn fire(event: Arc<Event>, ctx: Context) -> std::result::Result<(), HandlerError> {
    let s: Scheduled = serde_json::from_value(event.data.clone()).map_err(|e| {
        HandlerError::permanent(format!("timer event {} does not decode: {e}", event.id))
    })?;
    for _ in 0..ATTEMPTS {
        let read = read(&**ctx.store(), &s.key).await?;
        match read.status {
            TimerStatus::Pending { scheduled, .. } if scheduled == event.id => {}
            _ => return Ok(()),
        }
        if ctx.now() < s.at {
            return Err(HandlerError::defer_until(s.at));
        }
        let mut append = Append::new(
            event.stream.clone(),
            vec![Message::new(s.name.clone(), s.data.clone())],
        );
        append.expected = ExpectedVersion::after(read.version);
        append.idempotency_key = Some(format!("{REACTION}:{}", event.id));
        match ctx.append(append).await {
            Ok(_) => {
                crate::metrics::timer_fired(s.at, ctx.now());
                return Ok(());
            }
            // A cancel or a new schedule landed first: read again.
            Err(Error::Concurrency { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(HandlerError::transient(format!(
        "timer `{}` kept changing while it fired",
        s.key
    )))
}
