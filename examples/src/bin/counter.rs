//! A state with an invariant, on the SQLite store: a counter that never goes
//! above `MAX`.
//!
//! Shows an accepted action, an action the state refuses (`Error::Rejected`,
//! naming the invariant; nothing is appended), and a concurrency conflict: a
//! client decides on a version it read, another writer moves the stream
//! first, the append with the stale version fails with `Error::Concurrency`,
//! and the client runs its action again on the state as it is now.
//!
//! Run it: `cargo run -p act-examples --bin counter`

use std::error::Error;
use std::sync::Arc;

use act::{Act, Action, Actor, Append, ExpectedVersion, Invariant, State};
use act_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

const MAX: i64 = 10;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum CounterEvent {
    Incremented { by: i64 },
}

enum CounterAction {
    Increment { by: i64 },
}

impl Action for CounterAction {
    fn name(&self) -> &str {
        "increment"
    }
}

impl State for Counter {
    type Event = CounterEvent;
    type Action = CounterAction;

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Incremented { by } = event;
        self.value += by;
    }

    fn decide(&self, action: &CounterAction) -> Result<Vec<CounterEvent>, Invariant> {
        let CounterAction::Increment { by } = action;
        if *by <= 0 {
            return Err(Invariant::new("an increment must be positive"));
        }
        if self.value + by > MAX {
            return Err(Invariant::new(format!(
                "the counter never goes above {MAX} (it is {}, +{by} would pass it)",
                self.value
            )));
        }
        Ok(vec![CounterEvent::Incremented { by: *by }])
    }
}

fn check(ok: bool, what: String) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path().join("act.db")).await?);
    let app = Act::builder(store).build()?;
    let me = Actor::system("counter-example");
    let stream = "counter-1";

    // 1. Accepted: the state decides, the event is appended with the version read.
    let after = app
        .act::<Counter>(stream, &CounterAction::Increment { by: 7 }, &me)
        .await?;
    check(
        after.state.value == 7,
        format!("value {} after +7", after.state.value),
    )?;

    // 2. Refused: the invariant names itself, and nothing is appended.
    let refused = app
        .act::<Counter>(stream, &CounterAction::Increment { by: 5 }, &me)
        .await;
    let reason = match refused {
        Err(act::Error::Rejected { reason, .. }) => reason,
        other => return Err(format!("+5 should be rejected, got {other:?}").into()),
    };
    check(
        reason.contains("never goes above"),
        format!("reason: {reason}"),
    )?;
    println!("refused: {reason}");

    // 3. A conflict. A client reads the counter (version 0) and decides +1 on it…
    let read = app.load::<Counter>(stream).await?;
    let decided = read
        .state
        .decide(&CounterAction::Increment { by: 1 })
        .map_err(|i| i.0)?;
    // …another writer moves the stream first…
    app.act::<Counter>(stream, &CounterAction::Increment { by: 2 }, &me)
        .await?;
    // …so the client's append, which expects version 0, is refused whole.
    let messages = decided
        .iter()
        .map(act::state::encode)
        .collect::<act::Result<Vec<_>>>()?;
    let stale = Append::new(stream, messages).expect(ExpectedVersion::after(read.version));
    let conflict = app.store().append(stale).await;
    check(
        matches!(conflict, Err(act::Error::Concurrency { .. })),
        format!("a stale append should conflict, got {conflict:?}"),
    )?;
    println!("conflict: {}", conflict.unwrap_err());
    // Handled: run the action again; it decides on the state as it is now.
    // (`act` itself reloads and decides again once when its cached state was
    // stale; under real concurrency it can still return `Error::Concurrency`.)
    let retried = app
        .act::<Counter>(stream, &CounterAction::Increment { by: 1 }, &me)
        .await?;

    let (value, version) = (retried.state.value, retried.version);
    check(
        value == MAX && version == Some(2),
        format!("value {value} version {version:?}, expected {MAX} at version 2"),
    )?;
    println!(
        "ok: value {value} at version 2 (+7 accepted, +5 refused, +1 retried after a conflict)"
    );
    Ok(())
}
