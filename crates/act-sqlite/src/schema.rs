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
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "events, queues, work index", V1)];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

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
    let current: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM act_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > SCHEMA_VERSION {
        return Err(foreign(
            store,
            format!(
                "made by a newer act-rs: schema version {current}, this build knows versions up to {SCHEMA_VERSION}; upgrade act-rs to open it"
            ),
        ));
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
