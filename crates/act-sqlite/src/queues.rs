//! Queues in SQL: correlation checkpoint, work index, claim with leases and
//! fencing tokens, settle, renew, release, unblock, reset, listing.
//!
//! Every write runs inside the writer lane's `BEGIN IMMEDIATE` transaction, so
//! a claim in one process and a claim in another cannot both see a queue free.
//! Claim reads the `queues_due` partial index only; fetch follows `work`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use act::{
    Batch, Claim, Error, Event, Lease, LeaseRef, Outcome, QueueFilter, QueueState, Rejection,
    Settlement, Work,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};

use crate::error::Failure;
use crate::events::{event, COLUMNS};

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub(crate) fn checkpoint(tx: &Transaction) -> Result<i64, Failure> {
    Ok(
        tx.query_row("SELECT position FROM checkpoint WHERE id = 1", [], |r| {
            r.get(0)
        })?,
    )
}

/// Records work and moves the checkpoint, if it is still `from`.
pub(crate) fn enqueue(
    tx: &Transaction,
    work: &[Work],
    from: i64,
    to: i64,
) -> Result<(i64, bool), Failure> {
    let current = checkpoint(tx)?;
    if current != from {
        return Ok((current, false));
    }
    // Per queue: the highest event (work mark) and priority.
    let mut queues: BTreeMap<&str, (i64, i32)> = BTreeMap::new();
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO work (stream, event) VALUES (?1, ?2)")?;
        for w in work {
            insert.execute(params![w.stream, w.event])?;
            let e = queues
                .entry(w.stream.as_str())
                .or_insert((w.event, w.priority));
            e.0 = e.0.max(w.event);
            e.1 = e.1.max(w.priority);
        }
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO queues (stream, head, priority) VALUES (?1, ?2, ?3)
         ON CONFLICT (stream) DO UPDATE SET
             head = max(head, excluded.head),
             priority = max(priority, excluded.priority)",
    )?;
    let mut next = tx.prepare_cached(
        "UPDATE queues SET next = (SELECT min(event) FROM work WHERE work.stream = ?1 AND work.event > queues.position)
         WHERE stream = ?1 AND next IS NULL",
    )?;
    for (stream, (head, priority)) in &queues {
        upsert.execute(params![stream, head, priority])?;
        next.execute(params![stream])?;
    }
    tx.prepare_cached("UPDATE checkpoint SET position = ?1 WHERE id = 1")?
        .execute(params![to])?;
    Ok((to, !work.is_empty()))
}

pub(crate) fn claim(tx: &Transaction, c: &Claim, now: i64) -> Result<Vec<Batch>, Failure> {
    let expires = now.saturating_add(micros(c.lease));
    let picked: Vec<(String, i64, u32)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT stream, position, retries FROM queues
             WHERE next IS NOT NULL AND blocked = 0
               AND (lease_expires IS NULL OR lease_expires <= ?1)
               AND (retry_at IS NULL OR retry_at <= ?1)
             ORDER BY priority DESC, next, stream
             LIMIT ?2",
        )?;
        let limit = i64::try_from(c.queues).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![now, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        rows
    };
    let mut lease = tx.prepare_cached(
        "UPDATE queues SET token = token + 1, lease_owner = ?2, lease_expires = ?3 WHERE stream = ?1 RETURNING token",
    )?;
    let mut fetch = tx.prepare_cached(&format!(
        "SELECT {} FROM work w JOIN events e ON e.id = w.event
         WHERE w.stream = ?1 AND w.event > ?2 ORDER BY w.event LIMIT ?3",
        COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let per_queue = i64::try_from(c.events).unwrap_or(i64::MAX);
    let mut out = Vec::with_capacity(picked.len());
    for (stream, position, retries) in picked {
        let token: i64 = lease.query_row(params![stream, c.owner, expires], |r| r.get(0))?;
        let rows = fetch
            .query_map(params![stream, position, per_queue], event)?
            .collect::<Result<Vec<_>, _>>()?;
        let events = rows
            .into_iter()
            .map(|r| r.decode())
            .collect::<Result<Vec<Arc<Event>>, _>>()?;
        out.push(Batch {
            lease: Lease {
                stream,
                owner: c.owner.clone(),
                token,
                expires: time(expires),
                position,
                retries,
            },
            events,
        });
    }
    Ok(out)
}

struct Fence {
    token: i64,
    expires: Option<i64>,
    position: i64,
    retries: u32,
}

fn fence(tx: &Transaction, stream: &str) -> Result<Option<Fence>, Failure> {
    let mut stmt = tx.prepare_cached(
        "SELECT token, lease_expires, position, retries FROM queues WHERE stream = ?1",
    )?;
    Ok(stmt
        .query_row(params![stream], |r| {
            Ok(Fence {
                token: r.get(0)?,
                expires: r.get(1)?,
                position: r.get(2)?,
                retries: r.get(3)?,
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

/// Applies settlements; returns the results and whether a settled queue still
/// has work (so brokers should be woken).
pub(crate) fn settle(
    tx: &Transaction,
    settlements: &[Settlement],
    now: i64,
) -> Result<(Vec<Result<(), Rejection>>, bool), Failure> {
    let mut results = vec![Ok(()); settlements.len()];
    let mut more = false;
    let mut update = tx.prepare_cached(
        "UPDATE queues SET position = ?2, retries = ?3, retry_at = ?4, blocked = ?5, error = ?6,
             lease_owner = NULL, lease_expires = NULL,
             next = (SELECT min(event) FROM work WHERE work.stream = ?1 AND work.event > ?2)
         WHERE stream = ?1 RETURNING next IS NOT NULL AND blocked = 0",
    )?;
    for i in act::queue::settle_order(settlements) {
        let s = &settlements[i];
        let f = fence(tx, &s.lease.stream)?;
        results[i] = check(f.as_ref(), &s.lease, now, Some(s.from));
        let Some(f) = f.filter(|_| results[i].is_ok()) else {
            continue;
        };
        let failed = |retries| act::queue::retries_after_failure(s.from, s.to, retries);
        let (retries, retry_at, blocked, error) = match &s.outcome {
            Outcome::Ack => (0, None, false, None),
            Outcome::Retry { delay, error } => (
                failed(f.retries),
                Some(now.saturating_add(micros(*delay))),
                false,
                Some(error.as_str()),
            ),
            Outcome::Block { error } => (failed(f.retries), None, true, Some(error.as_str())),
        };
        let pending: bool = update.query_row(
            params![s.lease.stream, s.to, retries, retry_at, blocked, error],
            |r| r.get(0),
        )?;
        more |= pending && retry_at.is_none_or(|t| t <= now);
    }
    Ok((results, more))
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

pub(crate) fn unblock(tx: &Transaction, streams: &[String]) -> Result<Vec<String>, Failure> {
    let mut update = tx.prepare_cached(
        "UPDATE queues SET blocked = 0, retries = 0, retry_at = NULL, error = NULL, token = token + 1,
             lease_owner = NULL, lease_expires = NULL
         WHERE stream = ?1 AND blocked = 1",
    )?;
    let mut out = Vec::new();
    for s in streams {
        if update.execute(params![s])? > 0 {
            out.push(s.clone());
        }
    }
    Ok(out)
}

pub(crate) fn reset(tx: &Transaction, stream: &str, position: i64) -> Result<QueueState, Failure> {
    if position < 0 {
        return Err(Failure::Act(Error::InvalidInput(format!(
            "cannot reset `{stream}` to a negative position ({position})"
        ))));
    }
    let n = tx
        .prepare_cached(
            "UPDATE queues SET position = ?2, retries = 0, retry_at = NULL, blocked = 0, error = NULL,
                 token = token + 1, lease_owner = NULL, lease_expires = NULL,
                 next = (SELECT min(event) FROM work WHERE work.stream = ?1 AND work.event > ?2)
             WHERE stream = ?1",
        )?
        .execute(params![stream, position])?;
    if n == 0 {
        return Err(Failure::Act(Error::UnknownQueue(stream.to_string())));
    }
    let filter = QueueFilter {
        stream: Some(stream.to_string()),
        ..Default::default()
    };
    queues(tx, &filter)?
        .pop()
        .ok_or_else(|| Failure::Act(Error::UnknownQueue(stream.to_string())))
}

pub(crate) fn queues(tx: &Transaction, f: &QueueFilter) -> Result<Vec<QueueState>, Failure> {
    let mut sql = String::from(
        "SELECT q.stream, q.position, q.head, q.next,
                (SELECT count(*) FROM work w WHERE w.stream = q.stream AND w.event > q.position),
                q.priority, q.retries, q.retry_at, q.blocked, q.error, q.token, q.lease_owner, q.lease_expires
         FROM queues q WHERE 1 = 1",
    );
    if f.stream.is_some() {
        sql.push_str(" AND q.stream = ?1");
    }
    if f.blocked {
        sql.push_str(" AND q.blocked = 1");
    }
    if f.pending {
        sql.push_str(" AND q.next IS NOT NULL");
    }
    sql.push_str(" ORDER BY q.stream");
    if let Some(n) = f.limit {
        sql.push_str(&format!(" LIMIT {}", i64::try_from(n).unwrap_or(i64::MAX)));
    }
    let mut stmt = tx.prepare_cached(&sql)?;
    let map = |r: &rusqlite::Row<'_>| {
        Ok(QueueState {
            stream: r.get(0)?,
            position: r.get(1)?,
            head: r.get(2)?,
            next: r.get(3)?,
            lag: r.get::<_, i64>(4)?.max(0) as u64,
            priority: r.get(5)?,
            retries: r.get(6)?,
            retry_at: r.get::<_, Option<i64>>(7)?.map(time),
            blocked: r.get(8)?,
            error: r.get(9)?,
            token: r.get(10)?,
            lease_owner: r.get(11)?,
            lease_expires: r.get::<_, Option<i64>>(12)?.map(time),
        })
    };
    let rows = match &f.stream {
        Some(s) => stmt
            .query_map(params![s], map)?
            .collect::<Result<Vec<_>, _>>()?,
        None => stmt.query_map([], map)?.collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows)
}

pub(crate) fn next_due(tx: &Transaction, now: i64) -> Result<Option<Duration>, Failure> {
    let at: Option<i64> = tx.query_row(
        "SELECT min(max(coalesce(retry_at, 0), coalesce(lease_expires, 0)))
         FROM queues WHERE next IS NOT NULL AND blocked = 0",
        [],
        |r| r.get(0),
    )?;
    Ok(at.map(|t| Duration::from_micros(u64::try_from(t.saturating_sub(now)).unwrap_or(0))))
}
