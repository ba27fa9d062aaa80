//! Queues in SQL: claim with leases and fencing tokens, settle, renew,
//! release, unblock, reset, listing.
//!
//! Every write runs inside the writer lane's `BEGIN IMMEDIATE` transaction, so
//! a claim in one process and a claim in another cannot both see a queue free.
//! Claim walks the `queues_due` partial index (queues whose first pending item
//! is not blocked) in claim order and stops once it has leased enough queues;
//! a leased queue's batch follows the `items` primary key. Neither reads the
//! log beyond the events they return, nor every queue.
//!
//! A claim records the last event it hands out (`leased_to`). When that
//! lease lapses, the next claim marks the batch (`suspect_to`) and hands the
//! queue out one event at a time until an ack passes it, so a handler that
//! kills its process fails on the exact event ([`Lease::suspect`]).

use std::time::Duration;

use act::{
    Batch, Claim, Error, Lease, LeaseRef, Outcome, Pending, QueueFilter, QueueState, Rejection,
    Settlement,
};
use chrono::{DateTime, Utc};
use rusqlite::types::Value as Sql;
use rusqlite::{params, OptionalExtension, Transaction};

use crate::error::Failure;
use crate::events::{event, RawEvent};

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A queue's pending items up to a horizon, with their events, in id order:
/// a range of the `items` primary key and one event lookup per item.
const PENDING: &str = "SELECT e.id, e.stream, e.version, e.name, e.data, e.created, e.correlation,
        e.causation, e.actor, i.reaction
    FROM items i JOIN events e ON e.id = i.event
    WHERE i.stream = ?1 AND i.event <= ?2
    ORDER BY i.event, i.reaction";

/// Claim candidates in claim order: a walk of the `queues_due` index (no
/// sort), checking each entry's lease, retry time and replay horizon.
const CANDIDATES: &str =
    "SELECT stream, position, retries, lapses, lease_owner, waiting, replay, enqueued, next,
        leased_to, suspect_to
    FROM queues
    WHERE next IS NOT NULL AND blocked = 0
      AND (lease_expires IS NULL OR lease_expires <= ?1)
      AND (retry_at IS NULL OR retry_at <= ?1)
      AND (replay IS NULL OR next <= replay)
    ORDER BY priority DESC, next, stream";

/// Removes the acknowledged items: a range of the `items` primary key.
const ACKED: &str = "DELETE FROM items WHERE stream = ?1 AND event <= ?2 AND seq <= ?3";

/// One pending event of a queue and the reactions of its items ('' is an
/// item of schema version 1, which names none).
struct Due {
    event: RawEvent,
    id: i64,
    reactions: Vec<String>,
}

/// Up to `limit` pending events of `stream` at or below `horizon`, with all
/// their items, in id order. Stops reading at the first item past them.
fn pending(
    tx: &Transaction,
    stream: &str,
    horizon: Option<i64>,
    limit: usize,
) -> Result<Vec<Due>, Failure> {
    let mut stmt = tx.prepare_cached(PENDING)?;
    let mut rows = stmt.query(params![stream, horizon.unwrap_or(i64::MAX)])?;
    let mut out: Vec<Due> = Vec::new();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let reaction: String = row.get(9)?;
        if let Some(last) = out.last_mut() {
            if last.id == id {
                last.reactions.push(reaction);
                continue;
            }
        }
        if out.len() == limit {
            break;
        }
        out.push(Due {
            event: event(row)?,
            id,
            reactions: vec![reaction],
        });
    }
    Ok(out)
}

/// A claim candidate read from the due index.
struct Candidate {
    stream: String,
    position: i64,
    retries: u32,
    lapses: u32,
    owner: Option<String>,
    waiting: Option<String>,
    replay: Option<i64>,
    enqueued: i64,
    /// The first pending event (the due index only lists queues with one).
    next: i64,
    leased_to: i64,
    suspect_to: i64,
}

/// Leases up to `c.queues` claimable queues in claim order (see
/// [`act::QueueStore::claim`]).
pub(crate) fn claim(tx: &Transaction, c: &Claim, now: i64) -> Result<Vec<Batch>, Failure> {
    let mut out = Vec::new();
    if c.queues == 0 {
        return Ok(out);
    }
    let expires = now.saturating_add(micros(c.lease));
    let per_queue = c.events.max(1);
    let mut candidates = tx.prepare_cached(CANDIDATES)?;
    let mut lapse = tx.prepare_cached(
        "UPDATE queues SET retries = retries + 1, lapses = lapses + 1, error = ?2,
             lease_owner = NULL, lease_expires = NULL, suspect_to = max(suspect_to, leased_to)
         WHERE stream = ?1",
    )?;
    let mut wait = tx.prepare_cached("UPDATE queues SET waiting = ?2 WHERE stream = ?1")?;
    let mut lease = tx.prepare_cached(
        "UPDATE queues SET token = token + 1, lease_owner = ?2, lease_expires = ?3, waiting = NULL,
             leased_to = ?4
         WHERE stream = ?1 RETURNING token",
    )?;
    // The updates below change no column of the due index (priority, next,
    // blocked), so the scan goes on past the queues it has changed.
    let mut rows = candidates.query(params![now])?;
    while let Some(row) = rows.next()? {
        let q = Candidate {
            stream: row.get(0)?,
            position: row.get(1)?,
            retries: row.get(2)?,
            lapses: row.get(3)?,
            owner: row.get(4)?,
            waiting: row.get(5)?,
            replay: row.get(6)?,
            enqueued: row.get(7)?,
            next: row.get(8)?,
            leased_to: row.get(9)?,
            suspect_to: row.get(10)?,
        };
        if q.waiting.as_ref().is_some_and(|w| !c.reactions.contains(w)) {
            continue;
        }
        let (mut retries, mut lapses, mut suspect_to) = (q.retries, q.lapses, q.suspect_to);
        if let Some(previous) = &q.owner {
            // Claimable means the lease expired: it ended without a settlement,
            // somewhere in the batch it held.
            lapse.execute(params![q.stream, act::queue::lapse_error(previous)])?;
            retries = retries.saturating_add(1);
            lapses = lapses.saturating_add(1);
            suspect_to = suspect_to.max(q.leased_to);
        }
        // Walking a lapsed batch: one event per claim until an ack passes it.
        let suspect = suspect_to > 0 && q.next <= suspect_to;
        let limit = if suspect { 1 } else { per_queue };
        let due = pending(tx, &q.stream, q.replay, limit)?;
        let runnable = |r: &String| r.is_empty() || c.reactions.contains(r);
        let cut = due
            .iter()
            .position(|d| !d.reactions.iter().all(runnable))
            .unwrap_or(due.len());
        if cut == 0 {
            let missing = due
                .first()
                .and_then(|d| d.reactions.iter().find(|r| !runnable(r)));
            wait.execute(params![q.stream, missing])?;
            continue;
        }
        let leased_to = due[cut - 1].id;
        let events: Vec<Pending> = due
            .into_iter()
            .take(cut)
            .map(|d| {
                // An item of schema version 1 names no reaction: the broker
                // runs every reaction to the event that targets the queue.
                let legacy = d.reactions.iter().any(String::is_empty);
                Pending {
                    event: d.event.decode(),
                    reactions: if legacy { Vec::new() } else { d.reactions },
                }
            })
            .collect();
        let token: i64 =
            lease.query_row(params![q.stream, c.owner, expires, leased_to], |r| r.get(0))?;
        out.push(Batch {
            lease: Lease {
                stream: q.stream,
                owner: c.owner.clone(),
                token,
                expires: time(expires),
                position: q.position,
                retries,
                lapses,
                mark: q.enqueued,
                suspect,
            },
            events,
        });
        if out.len() == c.queues {
            break;
        }
    }
    Ok(out)
}

struct Fence {
    token: i64,
    expires: Option<i64>,
    position: i64,
    retries: u32,
    lapses: u32,
    suspect_to: i64,
}

fn fence(tx: &Transaction, stream: &str) -> Result<Option<Fence>, Failure> {
    let mut stmt = tx.prepare_cached(
        "SELECT token, lease_expires, position, retries, lapses, suspect_to FROM queues
         WHERE stream = ?1",
    )?;
    Ok(stmt
        .query_row(params![stream], |r| {
            Ok(Fence {
                token: r.get(0)?,
                expires: r.get(1)?,
                position: r.get(2)?,
                retries: r.get(3)?,
                lapses: r.get(4)?,
                suspect_to: r.get(5)?,
            })
        })
        .optional()?)
}

/// The fencing rule: known queue, current token, live lease, and (for
/// settlements) the position the lease read. Checked in that order.
fn check(
    f: Option<&Fence>,
    lease: &LeaseRef,
    now: i64,
    from: Option<i64>,
) -> Result<(), Rejection> {
    let Some(f) = f else {
        return Err(Rejection::Unknown(lease.stream.clone()));
    };
    if f.token != lease.token {
        return Err(Rejection::Stale {
            stream: lease.stream.clone(),
            token: lease.token,
            current: f.token,
        });
    }
    if f.expires.is_none_or(|e| e <= now) {
        return Err(Rejection::Expired {
            stream: lease.stream.clone(),
            token: lease.token,
        });
    }
    match from {
        Some(from) if from != f.position => Err(Rejection::Moved {
            stream: lease.stream.clone(),
            expected: from,
            actual: f.position,
        }),
        _ => Ok(()),
    }
}

/// Applies settlements, blocks first; returns one result per settlement.
/// Each applied one deletes the acknowledged items (event up to `acked`,
/// enqueued up to `mark`: a range of the primary key) and releases the lease.
/// Any ack is progress (the retry count starts again); one that reaches the
/// end of a lapsed batch (`suspect_to`) also ends its walk.
pub(crate) fn settle(
    tx: &Transaction,
    settlements: &[Settlement],
    now: i64,
) -> Result<Vec<Result<(), Rejection>>, Failure> {
    let mut results = vec![Ok(()); settlements.len()];
    let mut remove = tx.prepare_cached(ACKED)?;
    let mut update = tx.prepare_cached(
        "UPDATE queues SET position = max(position, ?2), retries = ?3, lapses = ?4, retry_at = ?5,
             blocked = CASE WHEN ?6 THEN 1 ELSE blocked END,
             error = CASE WHEN ?8 THEN error ELSE ?7 END, suspect_to = ?9,
             lease_owner = NULL, lease_expires = NULL, waiting = NULL,
             next = (SELECT min(event) FROM items WHERE items.stream = ?1)
         WHERE stream = ?1",
    )?;
    for i in act::queue::settle_order(settlements) {
        let s = &settlements[i];
        let f = fence(tx, &s.lease.stream)?;
        results[i] = check(f.as_ref(), &s.lease, now, Some(s.from));
        let Some(f) = f.filter(|_| results[i].is_ok()) else {
            continue;
        };
        // Any ack is progress; one past the end of a lapsed batch also ends
        // its walk (whole batches again).
        let mut suspect_to = f.suspect_to;
        if let Some(acked) = s.acked {
            remove.execute(params![s.lease.stream, acked, s.mark])?;
            if acked >= f.suspect_to {
                suspect_to = 0;
            }
        }
        let progress = s.acked.is_some();
        let failed = || {
            let retries = act::queue::retries_after_failure(progress, f.retries);
            (retries, if progress { 0 } else { f.lapses })
        };
        let keep_error = false;
        let (retries, lapses, retry_at, blocked, error) = match &s.outcome {
            Outcome::Ack => (0, 0, None, false, None),
            Outcome::Retry { delay, error } => {
                let (r, l) = failed();
                let at = now.saturating_add(micros(*delay));
                (r, l, Some(at), false, Some(error.as_str()))
            }
            Outcome::Block { error } => {
                let (r, l) = failed();
                (r, l, None, true, Some(error.as_str()))
            }
            Outcome::Defer { delay } => {
                let r = act::queue::retries_after_deferral(progress, f.retries);
                let l = if progress { 0 } else { f.lapses };
                let at = now.saturating_add(micros(*delay));
                (r, l, Some(at), false, None)
            }
        };
        update.execute(params![
            s.lease.stream,
            s.acked.unwrap_or(i64::MIN),
            retries,
            lapses,
            retry_at,
            blocked,
            error,
            keep_error,
            suspect_to
        ])?;
    }
    Ok(results)
}

pub(crate) fn renew(
    tx: &Transaction,
    leases: &[LeaseRef],
    lease: Duration,
    now: i64,
) -> Result<Vec<Result<DateTime<Utc>, Rejection>>, Failure> {
    let expires = now.saturating_add(micros(lease));
    let mut update = tx.prepare_cached("UPDATE queues SET lease_expires = ?2 WHERE stream = ?1")?;
    let mut out = Vec::with_capacity(leases.len());
    for l in leases {
        let f = fence(tx, &l.stream)?;
        match check(f.as_ref(), l, now, None) {
            Ok(()) => {
                update.execute(params![l.stream, expires])?;
                out.push(Ok(time(expires)));
            }
            Err(r) => out.push(Err(r)),
        }
    }
    Ok(out)
}

pub(crate) fn release(
    tx: &Transaction,
    leases: &[LeaseRef],
) -> Result<Vec<Result<(), Rejection>>, Failure> {
    let mut update = tx.prepare_cached(
        "UPDATE queues SET lease_owner = NULL, lease_expires = NULL WHERE stream = ?1",
    )?;
    let mut out = Vec::with_capacity(leases.len());
    for l in leases {
        let r = match fence(tx, &l.stream)? {
            None => Err(Rejection::Unknown(l.stream.clone())),
            Some(f) if f.token != l.token => Err(Rejection::Stale {
                stream: l.stream.clone(),
                token: l.token,
                current: f.token,
            }),
            Some(_) => {
                update.execute(params![l.stream])?;
                Ok(())
            }
        };
        out.push(r);
    }
    Ok(out)
}

/// Unblocks blocked queues; each is reported once, in the order given.
pub(crate) fn unblock(tx: &Transaction, streams: &[String]) -> Result<Vec<String>, Failure> {
    let mut update = tx.prepare_cached(
        "UPDATE queues SET blocked = 0, retries = 0, lapses = 0, retry_at = NULL, error = NULL,
             waiting = NULL, token = token + 1, lease_owner = NULL, lease_expires = NULL
         WHERE stream = ?1 AND blocked = 1",
    )?;
    let mut out: Vec<String> = Vec::new();
    for s in streams {
        if !out.contains(s) && update.execute(params![s])? > 0 {
            out.push(s.clone());
        }
    }
    Ok(out)
}

/// Replays a queue from `position` (see [`act::QueueStore::reset`]); ends
/// the walk of a lapsed batch.
pub(crate) fn reset(tx: &Transaction, stream: &str, position: i64) -> Result<QueueState, Failure> {
    if position < 0 {
        return Err(Failure::Act(Error::InvalidInput(format!(
            "cannot reset `{stream}` to a negative position ({position})"
        ))));
    }
    let head = crate::events::head(tx)?;
    if position > head {
        return Err(Failure::Act(Error::InvalidInput(format!(
            "cannot reset `{stream}` to {position}: the log's head is {head}; events past it do not exist yet"
        ))));
    }
    let candidates: Vec<(String, i64, i64)> = tx
        .prepare_cached(
            "SELECT name, start, checkpoint FROM subscriptions
             WHERE retired IS NULL AND (target IS NULL OR target = ?1)",
        )?
        .query_map(params![stream], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM queues WHERE stream = ?1")?
        .exists(params![stream])?;
    if !exists && candidates.is_empty() {
        return Err(Failure::Act(Error::UnknownQueue(stream.to_string())));
    }
    tx.prepare_cached("DELETE FROM replays WHERE stream = ?1")?
        .execute(params![stream])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO replays (stream, reaction, position, until) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut horizon: Option<i64> = None;
    for (reaction, start, checkpoint) in candidates {
        let from = position.max(start);
        if checkpoint > from {
            insert.execute(params![stream, reaction, from, checkpoint])?;
            horizon = Some(horizon.map_or(from, |h| h.min(from)));
        }
    }
    tx.prepare_cached("DELETE FROM items WHERE stream = ?1")?
        .execute(params![stream])?;
    tx.prepare_cached(
        "INSERT INTO queues (stream, position, floor, token, replay) VALUES (?1, ?2, ?2, 1, ?3)
         ON CONFLICT (stream) DO UPDATE SET
             position = ?2, floor = ?2, next = NULL, suspect_to = 0, retries = 0, lapses = 0,
             retry_at = NULL,
             blocked = 0, error = NULL, waiting = NULL, token = token + 1,
             lease_owner = NULL, lease_expires = NULL, replay = ?3",
    )?
    .execute(params![stream, position, horizon])?;
    let filter = QueueFilter {
        stream: Some(stream.to_string()),
        ..Default::default()
    };
    queues(tx, &filter)?
        .pop()
        .ok_or_else(|| Failure::Act(Error::UnknownQueue(stream.to_string())))
}

/// Queues for operators, ordered by stream (byte order: BINARY collation).
/// Costs one read of each listed queue's items (for `lag`).
pub(crate) fn queues(tx: &Transaction, f: &QueueFilter) -> Result<Vec<QueueState>, Failure> {
    let mut sql = String::from(
        "SELECT q.stream, q.position, q.head, q.next,
                (SELECT count(DISTINCT i.event) FROM items i WHERE i.stream = q.stream),
                q.priority, q.retries, q.retry_at, q.blocked, q.error, q.token, q.lease_owner,
                q.lease_expires, q.waiting, q.replay
         FROM queues q WHERE 1 = 1",
    );
    let mut args: Vec<Sql> = Vec::new();
    if let Some(s) = &f.stream {
        args.push(Sql::Text(s.clone()));
        sql.push_str(&format!(" AND q.stream = ?{}", args.len()));
    }
    if let Some(a) = &f.after {
        args.push(Sql::Text(a.clone()));
        sql.push_str(&format!(" AND q.stream > ?{}", args.len()));
    }
    if f.blocked {
        sql.push_str(" AND q.blocked = 1");
    }
    if f.pending {
        sql.push_str(" AND q.next IS NOT NULL");
    }
    sql.push_str(" ORDER BY q.stream");
    if let Some(n) = f.limit {
        args.push(Sql::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(QueueState {
                stream: r.get(0)?,
                position: r.get(1)?,
                head: r.get(2)?,
                next: r.get(3)?,
                lag: r.get::<_, i64>(4)?.max(0).unsigned_abs(),
                priority: r.get(5)?,
                retries: r.get(6)?,
                retry_at: r.get::<_, Option<i64>>(7)?.map(time),
                blocked: r.get(8)?,
                error: r.get(9)?,
                token: r.get(10)?,
                lease_owner: r.get(11)?,
                lease_expires: r.get::<_, Option<i64>>(12)?.map(time),
                waiting: r.get(13)?,
                replay: r.get(14)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Pending items per reaction, ordered by name (byte order: BINARY
/// collation). One pass over the `items` table (pending items only).
pub(crate) fn pending_by_reaction(tx: &Transaction) -> Result<Vec<(String, u64)>, Failure> {
    let mut stmt = tx.prepare_cached(
        "SELECT reaction, count(*) FROM items GROUP BY reaction ORDER BY reaction",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?.max(0).unsigned_abs(),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

const NEXT_DUE: &str = "SELECT min(max(coalesce(retry_at, 0), coalesce(lease_expires, 0)))
    FROM queues
    WHERE next IS NOT NULL AND blocked = 0
      AND (replay IS NULL OR next <= replay)
      AND (waiting IS NULL OR waiting IN (SELECT value FROM json_each(?1)))";

/// How long until a queue a broker running `reactions` may claim comes due.
/// Reads the due index (every unblocked queue with pending work).
pub(crate) fn next_due(
    tx: &Transaction,
    reactions: &[String],
    now: i64,
) -> Result<Option<Duration>, Failure> {
    let reactions = serde_json::to_string(reactions)
        .map_err(|e| Error::decode("the reactions of a broker", e))?;
    let at: Option<i64> = tx
        .prepare_cached(NEXT_DUE)?
        .query_row(params![reactions], |r| r.get(0))?;
    Ok(at.map(|t| Duration::from_micros(u64::try_from(t.saturating_sub(now)).unwrap_or(0))))
}

/// Acknowledges a queue's events up to `acked` inside the caller's
/// transaction (a transactional projection), under the fencing rule of a
/// settlement; keeps the lease (the broker settles it afterwards).
pub(crate) fn ack_within(
    tx: &Transaction,
    fenced: &act::Fenced,
    acked: i64,
    now: i64,
) -> Result<Result<(), Rejection>, Failure> {
    let f = fence(tx, &fenced.lease.stream)?;
    if let Err(r) = check(f.as_ref(), &fenced.lease, now, Some(fenced.from)) {
        return Ok(Err(r));
    }
    let Some(f) = f else {
        return Ok(Err(Rejection::Unknown(fenced.lease.stream.clone())));
    };
    tx.prepare_cached(ACKED)?
        .execute(params![fenced.lease.stream, acked, fenced.mark])?;
    let suspect_to = if acked >= f.suspect_to {
        0
    } else {
        f.suspect_to
    };
    tx.prepare_cached(
        "UPDATE queues SET position = max(position, ?2), retries = 0, lapses = 0, retry_at = NULL,
             error = NULL, suspect_to = ?3,
             next = (SELECT min(event) FROM items WHERE items.stream = ?1)
         WHERE stream = ?1",
    )?
    .execute(params![fenced.lease.stream, acked, suspect_to])?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` on a migrated database, one line per step.
    fn plan(sql: &str) -> String {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn, "test").unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![Sql::Null; stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("\n")
    }

    #[test]
    fn claim_walks_the_due_index_in_order_without_sorting() {
        let p = plan(CANDIDATES);
        assert!(p.contains("USING INDEX queues_due"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }

    #[test]
    fn a_batch_follows_the_items_key_and_looks_events_up_by_id() {
        let p = plan(PENDING);
        assert!(
            p.contains("SEARCH i USING PRIMARY KEY (stream=? AND event<?)"),
            "{p}"
        );
        assert!(
            p.contains("SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE") && !p.contains("SCAN"), "{p}");
    }

    #[test]
    fn an_ack_deletes_a_range_of_the_items_key() {
        let p = plan(ACKED);
        assert!(
            p.contains("SEARCH items USING PRIMARY KEY (stream=? AND event<?)"),
            "{p}"
        );
    }

    #[test]
    fn next_due_reads_the_due_index_only() {
        let p = plan(NEXT_DUE);
        assert!(p.contains("queues USING INDEX queues_due"), "{p}");
    }
}
