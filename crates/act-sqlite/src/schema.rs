//! The schema: numbered migrations applied in order, each recorded with the
//! time it was applied, under a write lock so two processes opening the same
//! file at once cannot race. The file is marked with an `application_id`, so a
//! database made by something else is refused instead of being altered, and a
//! file made by a newer act-rs is a clear error, not a crash.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::Failure;

/// `PRAGMA application_id` of act-rs databases: "act!".
pub(crate) const APPLICATION_ID: i32 = 0x6163_7421;

/// The migrations, in order. Never edit a released one; add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "events, queues, work index", V1),
    (2, "subscriptions, items per reaction, replays", V2),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

const V1: &str = "
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,      -- global position; ids are never reused
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    data        TEXT    NOT NULL,         -- JSON
    created     INTEGER NOT NULL,         -- microseconds since the Unix epoch, UTC
    correlation TEXT    NOT NULL,
    causation   TEXT,                     -- JSON, NULL when empty
    actor       TEXT,                     -- JSON, NULL when empty
    UNIQUE (stream, version)
);
-- First append of each idempotency key: a second append returns these events.
CREATE TABLE appends (
    key   TEXT    PRIMARY KEY,
    first INTEGER NOT NULL,
    last  INTEGER NOT NULL
) WITHOUT ROWID;
-- Correlation checkpoint: every event up to it has been routed to its queues.
CREATE TABLE checkpoint (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO checkpoint (id, position) VALUES (1, 0);
CREATE TABLE queues (
    stream        TEXT    PRIMARY KEY,
    position      INTEGER NOT NULL DEFAULT 0,  -- last acknowledged event id
    head          INTEGER NOT NULL DEFAULT 0,  -- work mark: last event enqueued
    next          INTEGER,                     -- first pending event, NULL when none
    priority      INTEGER NOT NULL DEFAULT 0,
    retries       INTEGER NOT NULL DEFAULT 0,
    retry_at      INTEGER,                     -- microseconds, store clock
    blocked       INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    token         INTEGER NOT NULL DEFAULT 0,  -- fencing token
    lease_owner   TEXT,
    lease_expires INTEGER                      -- microseconds, store clock
) WITHOUT ROWID;
-- Claim walks this index only: queues with pending work, in claim order.
CREATE INDEX queues_due ON queues (priority DESC, next, stream)
    WHERE next IS NOT NULL AND blocked = 0;
-- Each queue's events: fetch follows it instead of scanning the log.
CREATE TABLE work (
    stream TEXT    NOT NULL,
    event  INTEGER NOT NULL,
    PRIMARY KEY (stream, event)
) WITHOUT ROWID;
";

/// Port version 2: durable subscriptions (one checkpoint per reaction),
/// pending items that name their reaction, replays of reset queues, and the
/// queue columns they need. Carries a version 1 file forward: its one
/// correlation checkpoint stays in `checkpoint` (read as the legacy
/// checkpoint, never written again); its pending work (rows past their
/// queue's position) becomes items with no reaction (`''`), numbered in
/// event order among every row the queue ever had (that count is its
/// `enqueued`); acknowledged rows are dropped. `queues_due` is kept: `next` is now the first pending item.
/// A version 1 lease still out at the upgrade lapses like any other, but
/// its batch is unknown (`leased_to` 0), so it starts no walk.
const V2: &str = "
-- Every reaction the store has seen: where it starts and how far it has
-- been correlated.
CREATE TABLE subscriptions (
    name       TEXT    PRIMARY KEY,
    events     TEXT    NOT NULL,          -- JSON array of the event names it handles
    target     TEXT,                      -- its static target queue; NULL when dynamic
    start      INTEGER NOT NULL,          -- it handles events with an id above this
    checkpoint INTEGER NOT NULL,          -- every event up to it was correlated for it
    created    INTEGER NOT NULL,          -- microseconds since the Unix epoch, store clock
    seen       INTEGER NOT NULL,          -- last registration by a broker
    retired    INTEGER                    -- when it was retired; NULL while active
) WITHOUT ROWID;
-- Reset queues being re-correlated from the log, per reaction.
CREATE TABLE replays (
    stream   TEXT    NOT NULL,
    reaction TEXT    NOT NULL,
    position INTEGER NOT NULL,            -- re-correlated up to this event
    until    INTEGER NOT NULL,            -- the reaction's checkpoint at the reset
    PRIMARY KEY (stream, reaction)
) WITHOUT ROWID;
ALTER TABLE queues ADD COLUMN floor    INTEGER NOT NULL DEFAULT 0;  -- items at or below it are dropped
ALTER TABLE queues ADD COLUMN enqueued INTEGER NOT NULL DEFAULT 0;  -- items ever enqueued (last seq)
ALTER TABLE queues ADD COLUMN lapses   INTEGER NOT NULL DEFAULT 0;  -- leases that ended unsettled
ALTER TABLE queues ADD COLUMN waiting  TEXT;                        -- reaction the queue waits for
ALTER TABLE queues ADD COLUMN replay   INTEGER;                     -- replay horizon; NULL when none
ALTER TABLE queues ADD COLUMN leased_to  INTEGER NOT NULL DEFAULT 0; -- last event of the latest claim's batch
ALTER TABLE queues ADD COLUMN suspect_to INTEGER NOT NULL DEFAULT 0; -- end of a lapsed batch being walked; 0 when none
-- Pending items only: an ack deletes them. Claim and settle follow the
-- primary key (a queue's items in event order).
CREATE TABLE items (
    stream   TEXT    NOT NULL,
    event    INTEGER NOT NULL,
    reaction TEXT    NOT NULL,            -- '' for work enqueued by schema version 1
    seq      INTEGER NOT NULL,            -- the queue's enqueue counter when added
    PRIMARY KEY (stream, event, reaction)
) WITHOUT ROWID;
INSERT INTO items (stream, event, reaction, seq)
    SELECT stream, event, '', seq FROM (
        SELECT w.stream, w.event, q.position,
               row_number() OVER (PARTITION BY w.stream ORDER BY w.event) AS seq
        FROM work w JOIN queues q ON q.stream = w.stream)
    WHERE event > position;
UPDATE queues SET
    enqueued = (SELECT count(*) FROM work WHERE work.stream = queues.stream),
    next = (SELECT min(event) FROM items WHERE items.stream = queues.stream);
DROP TABLE work;
";

fn foreign(store: &str, message: String) -> Failure {
    Failure::Act(act::Error::Schema {
        store: store.to_string(),
        message,
    })
}

/// Reads (never writes) whether the file is an act-rs database (`true`), an
/// empty one (`false`), or something else (an error). Run it before anything
/// that could write, such as switching the journal to WAL, and inside a
/// transaction: its two reads must see the same snapshot.
pub(crate) fn is_ours(conn: &Connection, store: &str) -> Result<bool, Failure> {
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app_id == APPLICATION_ID {
        return Ok(true);
    }
    if app_id != 0 {
        return Err(foreign(
            store,
            format!("not an act-rs database (application_id {app_id:#x}); refusing to touch it"),
        ));
    }
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !tables.is_empty() {
        return Err(foreign(
            store,
            format!(
                "not an act-rs database: it holds tables {} and no act-rs marker; refusing to touch it",
                tables.join(", ")
            ),
        ));
    }
    Ok(false)
}

/// The schema version recorded in an act-rs database.
fn recorded_version(conn: &Connection) -> Result<i64, Failure> {
    Ok(conn.query_row(
        "SELECT coalesce(max(version), 0) FROM act_migrations",
        [],
        |r| r.get(0),
    )?)
}

fn newer(store: &str, current: i64) -> Failure {
    foreign(
        store,
        format!(
            "made by a newer act-rs: schema version {current}, this build knows versions up to {SCHEMA_VERSION}; upgrade act-rs to open it"
        ),
    )
}

/// Checks, reading only, that an act-rs database has exactly the schema
/// this build writes: what a store opened read-only needs, since it cannot
/// migrate. An older schema asks for one open for writing.
pub(crate) fn check_current(conn: &Connection, store: &str) -> Result<(), Failure> {
    let current = recorded_version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(newer(store, current));
    }
    if current < SCHEMA_VERSION {
        return Err(foreign(
            store,
            format!(
                "schema version {current} is older than this build's ({SCHEMA_VERSION}) and a store opened read-only cannot upgrade it; \
                 open it once for writing (e.g. `act worker`) to upgrade it"
            ),
        ));
    }
    Ok(())
}

/// Brings the schema of an act-rs (or empty) database up to date.
pub(crate) fn migrate(conn: &mut Connection, store: &str) -> Result<(), Failure> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have created the schema while we waited.
    if !is_ours(&tx, store)? {
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.execute_batch(
            "CREATE TABLE act_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT    NOT NULL,
                applied_at TEXT    NOT NULL
            );",
        )?;
    }
    let current = recorded_version(&tx)?;
    if current > SCHEMA_VERSION {
        return Err(newer(store, current));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO act_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, chrono::Utc::now().to_rfc3339()],
        )?;
        tracing::info!(version, name, "applied SQLite migration");
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
pub(crate) const V1_SQL: &str = V1;
