//! Subscriptions in SQL and the correlation steps that fill queues: one
//! checkpoint per reaction, compare-and-set per reaction, items keyed by
//! (queue, event, reaction), replays of reset queues, retirement.
//!
//! Every write runs inside the writer lane's `BEGIN IMMEDIATE` transaction.
//! An enqueue costs one prepared insert per item and one write per touched
//! queue, whatever the size of the log or the number of queues.

use std::collections::HashMap;

use act::{Correlation, Error, Replay, Retired, Subscription, SubscriptionState};
use rusqlite::{params, OptionalExtension, Transaction};

use crate::error::Failure;
use crate::queues::time;

/// The one correlation checkpoint of a store upgraded from schema version 1
/// (0 on a store created by version 2: migration 1 writes 0, nothing
/// writes it since).
pub(crate) fn legacy_checkpoint(tx: &Transaction) -> Result<i64, Failure> {
    Ok(
        tx.query_row("SELECT position FROM checkpoint WHERE id = 1", [], |r| {
            r.get(0)
        })?,
    )
}

/// Records new subscriptions, refreshes known active ones, and lists all.
pub(crate) fn subscribe(
    tx: &Transaction,
    subscriptions: &[Subscription],
    now: i64,
) -> Result<Vec<SubscriptionState>, Failure> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO subscriptions (name, events, target, start, checkpoint, created, seen)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?5)
         ON CONFLICT (name) DO UPDATE SET
             events = excluded.events, target = excluded.target, seen = excluded.seen
         WHERE retired IS NULL",
    )?;
    for s in subscriptions {
        let events = serde_json::to_string(&s.events)
            .map_err(|e| Error::decode(format!("the event names of `{}`", s.name), e))?;
        upsert.execute(params![s.name, events, s.target, s.start, now])?;
    }
    list(tx)
}

/// Every subscription, ordered by name (byte order: BINARY collation).
pub(crate) fn list(tx: &Transaction) -> Result<Vec<SubscriptionState>, Failure> {
    let mut stmt = tx.prepare_cached(
        "SELECT name, events, target, start, checkpoint, created, seen, retired
         FROM subscriptions ORDER BY name",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(name, events, target, start, checkpoint, created, seen, retired)| {
                let events = serde_json::from_str(&events).map_err(|e| {
                    Error::decode(format!("the event names of subscription `{name}`"), e)
                })?;
                Ok(SubscriptionState {
                    name,
                    events,
                    target,
                    start,
                    checkpoint,
                    created: time(created),
                    seen: time(seen),
                    retired: retired.map(time),
                })
            },
        )
        .collect()
}

/// Retires reactions (all or none: an unknown name changes nothing). Costs
/// one scan of the pending items and of the queues per newly retired
/// reaction: an operator command, not a hot path.
pub(crate) fn retire(
    tx: &Transaction,
    names: &[String],
    now: i64,
) -> Result<Vec<Retired>, Failure> {
    let mut active =
        tx.prepare_cached("SELECT retired IS NULL FROM subscriptions WHERE name = ?1")?;
    for n in names {
        if active
            .query_row(params![n], |r| r.get::<_, bool>(0))
            .optional()?
            .is_none()
        {
            return Err(Failure::Act(Error::UnknownReaction(n.clone())));
        }
    }
    let mut mark = tx.prepare_cached("UPDATE subscriptions SET retired = ?2 WHERE name = ?1")?;
    let mut counts = tx
        .prepare_cached("SELECT stream, count(*) FROM items WHERE reaction = ?1 GROUP BY stream")?;
    let mut delete = tx.prepare_cached("DELETE FROM items WHERE reaction = ?1")?;
    let mut next = tx.prepare_cached(
        "UPDATE queues SET next = (SELECT min(event) FROM items WHERE items.stream = ?1)
         WHERE stream = ?1",
    )?;
    let mut unwait = tx.prepare_cached("UPDATE queues SET waiting = NULL WHERE waiting = ?1")?;
    let mut replays =
        tx.prepare_cached("DELETE FROM replays WHERE reaction = ?1 RETURNING stream")?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let newly: bool = active.query_row(params![n], |r| r.get(0))?;
        let (mut dropped, mut queues) = (0u64, 0u64);
        if newly {
            mark.execute(params![n, now])?;
            let touched = counts
                .query_map(params![n], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            delete.execute(params![n])?;
            for (stream, count) in &touched {
                next.execute(params![stream])?;
                dropped += count.unsigned_abs();
                queues += 1;
            }
            unwait.execute(params![n])?;
            let streams = replays
                .query_map(params![n], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for stream in streams {
                refresh_horizon(tx, &stream)?;
            }
        }
        out.push(Retired {
            name: n.clone(),
            dropped,
            queues,
            newly,
        });
    }
    Ok(out)
}

/// The replays under way, ordered by stream then reaction (byte order).
pub(crate) fn replays(tx: &Transaction) -> Result<Vec<Replay>, Failure> {
    let mut stmt = tx.prepare_cached(
        "SELECT stream, reaction, position, until FROM replays ORDER BY stream, reaction",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Replay {
                stream: r.get(0)?,
                reaction: r.get(1)?,
                position: r.get(2)?,
                until: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Sets a queue's replay horizon to the lowest position of its replays
/// (NULL when it has none).
pub(crate) fn refresh_horizon(tx: &Transaction, stream: &str) -> Result<(), Failure> {
    tx.prepare_cached(
        "UPDATE queues SET replay = (SELECT min(position) FROM replays WHERE replays.stream = ?1)
         WHERE stream = ?1",
    )?
    .execute(params![stream])?;
    Ok(())
}

/// A queue as an enqueue sees it: read once, written once.
struct Touched {
    exists: bool,
    changed: bool,
    floor: i64,
    next: Option<i64>,
    enqueued: i64,
    priority: i32,
    head: i64,
    clear_waiting: bool,
    /// `next` and `priority` as read.
    was: (Option<i64>, i32),
}

impl Touched {
    /// True when the step changed none of the due index's columns.
    fn unmoved(&self) -> bool {
        (self.next, self.priority) == self.was && !self.clear_waiting
    }
}

fn load<'a>(
    tx: &Transaction,
    queues: &mut HashMap<&'a str, Touched>,
    stream: &'a str,
) -> Result<(), Failure> {
    if queues.contains_key(stream) {
        return Ok(());
    }
    let found = tx
        .prepare_cached(
            "SELECT floor, next, enqueued, priority, head FROM queues WHERE stream = ?1",
        )?
        .query_row(params![stream], |r| {
            let (next, priority) = (r.get(1)?, r.get(3)?);
            Ok(Touched {
                exists: true,
                changed: false,
                floor: r.get(0)?,
                next,
                enqueued: r.get(2)?,
                priority,
                head: r.get(4)?,
                clear_waiting: false,
                was: (next, priority),
            })
        })
        .optional()?;
    queues.insert(
        stream,
        found.unwrap_or(Touched {
            exists: false,
            changed: false,
            floor: 0,
            next: None,
            enqueued: 0,
            priority: 0,
            head: 0,
            clear_waiting: false,
            was: (None, 0),
        }),
    );
    Ok(())
}

/// Applies one correlation step (see [`act::QueueStore::enqueue`]).
/// Returns what it did to each reaction and whether an item was added.
pub(crate) fn enqueue(
    tx: &Transaction,
    step: &Correlation,
) -> Result<(act::Enqueued, bool), Failure> {
    let head = crate::events::head(tx)?;
    if let Some(w) = step.work.iter().find(|w| w.event < 1 || w.event > head) {
        return Err(Failure::Act(Error::InvalidInput(format!(
            "work for `{}` names event {}, which is not in the log (head {head})",
            w.stream, w.event
        ))));
    }
    // Which reactions this step moves: those still at `from`.
    let mut after = Vec::with_capacity(step.reactions.len());
    let mut moved: Vec<&str> = Vec::new();
    {
        let mut checkpoint = tx.prepare_cached(
            "SELECT checkpoint FROM subscriptions WHERE name = ?1 AND retired IS NULL",
        )?;
        let mut replay =
            tx.prepare_cached("SELECT position FROM replays WHERE stream = ?1 AND reaction = ?2")?;
        for r in &step.reactions {
            let at: Option<i64> = match &step.replay {
                None => checkpoint.query_row(params![r], |x| x.get(0)).optional()?,
                Some(q) => replay.query_row(params![q, r], |x| x.get(0)).optional()?,
            };
            if at == Some(step.from) {
                moved.push(r);
                after.push(Some(step.to));
            } else {
                after.push(at);
            }
        }
    }
    let mut queues: HashMap<&str, Touched> = HashMap::new();
    let mut added = false;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO items (stream, event, reaction, seq) VALUES (?1, ?2, ?3, ?4)",
        )?;
        // In key order: each page of the items (and queues) b-tree is
        // visited once, so a page of work spread over many queues dirties
        // each page once. The order of one step's items changes nothing
        // else: their sequence numbers are all above every earlier mark, and
        // a queue's priority is the maximum over them either way. (Stable:
        // of two identical items, the first is kept, as in memory.)
        let mut work: Vec<&act::Work> = step
            .work
            .iter()
            .filter(|w| {
                moved.contains(&w.reaction.as_str())
                    && step.replay.as_ref().is_none_or(|q| *q == w.stream)
            })
            .collect();
        work.sort_by(|a, b| {
            (a.stream.as_bytes(), a.event, a.reaction.as_bytes()).cmp(&(
                b.stream.as_bytes(),
                b.event,
                b.reaction.as_bytes(),
            ))
        });
        for w in work {
            load(tx, &mut queues, &w.stream)?;
            let Some(q) = queues.get_mut(w.stream.as_str()) else {
                continue;
            };
            if w.event <= q.floor
                || insert.execute(params![w.stream, w.event, w.reaction, q.enqueued + 1])? == 0
            {
                continue;
            }
            if q.next.is_some_and(|n| w.event < n) {
                // The first pending event changed: look again at who can run it.
                q.clear_waiting = true;
            }
            // The highest priority ever enqueued; the first item sets it.
            q.priority = if q.enqueued == 0 {
                w.priority
            } else {
                q.priority.max(w.priority)
            };
            q.enqueued += 1;
            q.next = Some(q.next.map_or(w.event, |n| n.min(w.event)));
            q.head = q.head.max(w.event);
            q.changed = true;
            added = true;
        }
    }
    if !queues.is_empty() {
        let mut update = tx.prepare_cached(
            "UPDATE queues SET next = ?2, head = ?3, priority = ?4, enqueued = ?5,
                 waiting = CASE WHEN ?6 THEN NULL ELSE waiting END
             WHERE stream = ?1",
        )?;
        // The common case (more work behind the first pending item): no
        // column of the due index changes, so SQLite leaves the index alone.
        let mut grow =
            tx.prepare_cached("UPDATE queues SET head = ?2, enqueued = ?3 WHERE stream = ?1")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO queues (stream, next, head, priority, enqueued) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (stream, q) in queues.iter().filter(|(_, q)| q.changed) {
            if q.exists && q.unmoved() {
                grow.execute(params![stream, q.head, q.enqueued])?;
            } else if q.exists {
                update.execute(params![
                    stream,
                    q.next,
                    q.head,
                    q.priority,
                    q.enqueued,
                    q.clear_waiting
                ])?;
            } else {
                insert.execute(params![stream, q.next, q.head, q.priority, q.enqueued])?;
            }
        }
    }
    match &step.replay {
        None => {
            let mut update =
                tx.prepare_cached("UPDATE subscriptions SET checkpoint = ?2 WHERE name = ?1")?;
            for r in &moved {
                update.execute(params![r, step.to])?;
            }
        }
        Some(q) if !moved.is_empty() => {
            let mut update = tx.prepare_cached(
                "UPDATE replays SET position = ?3 WHERE stream = ?1 AND reaction = ?2",
            )?;
            let mut done = tx.prepare_cached(
                "DELETE FROM replays WHERE stream = ?1 AND reaction = ?2 AND position >= until",
            )?;
            for r in &moved {
                update.execute(params![q, r, step.to])?;
                done.execute(params![q, r])?;
            }
            refresh_horizon(tx, q)?;
        }
        Some(_) => {}
    }
    let flags = step
        .reactions
        .iter()
        .map(|r| moved.contains(&r.as_str()))
        .collect();
    Ok((
        act::Enqueued {
            positions: after,
            moved: flags,
        },
        added,
    ))
}
