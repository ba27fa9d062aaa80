//! Correlation on Redis: the step that moves reactions' checkpoints (or
//! replays) and records their items, the replays of reset queues, and
//! reset itself.
//!
//! A replay is a member `queue \0 reaction` of the `replays` sorted set
//! (byte order of the pair), its position and end in the `rp` hash, and the
//! reaction in the queue's `rq:{queue}` sorted set scored by its position,
//! whose first member is the queue's replay horizon.

use act::{Correlation, Error, QueueState, Replay};
use redis::Value;

use crate::conn::Conn;
use crate::queues::state;
use crate::reply::{at, int, items, opt_int, text, Bad};
use crate::scripts;

/// Applies one step; returns what it did to each reaction and whether items
/// were added.
pub(crate) async fn enqueue(conn: &Conn, step: &Correlation) -> act::Result<(act::Enqueued, bool)> {
    if step.to < step.from {
        return Err(Error::InvalidInput(format!(
            "a correlation step cannot move backwards (from {} to {})",
            step.from, step.to
        )));
    }
    for w in &step.work {
        act::limits::check_name("the queue name", &w.stream)?;
    }
    let mut inv = conn.script(&scripts::ENQUEUE);
    inv.arg(step.replay.as_deref().unwrap_or(""))
        .arg(step.from)
        .arg(step.to)
        .arg(step.reactions.len());
    for r in &step.reactions {
        inv.arg(r);
    }
    for w in &step.work {
        inv.arg(&w.stream)
            .arg(w.event)
            .arg(&w.reaction)
            .arg(w.priority);
    }
    let reply = conn.run(&inv).await?;
    let bad = |b| conn.bad(b);
    let r = items(&reply).map_err(bad)?;
    let flag = int(at(r, 0).map_err(bad)?).map_err(bad)?;
    if flag < 0 {
        let i = usize::try_from(int(at(r, 1).map_err(bad)?).map_err(bad)?).unwrap_or(usize::MAX);
        let head = int(at(r, 2).map_err(bad)?).map_err(bad)?;
        let w = step
            .work
            .get(i)
            .ok_or_else(|| bad(format!("enqueue refused item {i} of {}", step.work.len())))?;
        return Err(Error::InvalidInput(format!(
            "work for `{}` names event {}, which is not in the log (head {head})",
            w.stream, w.event
        )));
    }
    let after = items(at(r, 1).map_err(bad)?)
        .map_err(bad)?
        .iter()
        .map(|v| opt_int(v).map_err(bad))
        .collect::<act::Result<Vec<_>>>()?;
    let moved = items(at(r, 2).map_err(bad)?)
        .map_err(bad)?
        .iter()
        .map(|v| int(v).map(|m| m == 1).map_err(bad))
        .collect::<act::Result<Vec<_>>>()?;
    if after.len() != step.reactions.len() || moved.len() != step.reactions.len() {
        return Err(bad(format!(
            "enqueue answered {} positions and {} moves for {} reactions",
            after.len(),
            moved.len(),
            step.reactions.len()
        )));
    }
    Ok((
        act::Enqueued {
            positions: after,
            moved,
        },
        flag == 1,
    ))
}

/// The replays under way, ordered by queue then reaction.
pub(crate) async fn replays(conn: &Conn) -> act::Result<Vec<Replay>> {
    let reply = conn.run(&conn.script(&scripts::REPLAYS)).await?;
    let bad = |b| conn.bad(b);
    let parse = |v: &Value| -> Result<Replay, Bad> {
        let r = items(v)?;
        Ok(Replay {
            stream: text(at(r, 0)?)?,
            reaction: text(at(r, 1)?)?,
            position: int(at(r, 2)?)?,
            until: int(at(r, 3)?)?,
        })
    };
    items(&reply)
        .map_err(bad)?
        .iter()
        .map(|v| parse(v).map_err(bad))
        .collect()
}

/// Resets a queue to `position` and records its replays.
pub(crate) async fn reset(conn: &Conn, stream: &str, position: i64) -> act::Result<QueueState> {
    if position < 0 {
        return Err(Error::InvalidInput(format!(
            "cannot reset `{stream}` to a negative position ({position})"
        )));
    }
    // Replays name the queue in a member `queue \0 reaction`: a name no
    // enqueue could create is refused here too.
    act::limits::check_name("the queue name", stream)?;
    let mut inv = conn.script(&scripts::RESET);
    inv.arg(stream).arg(position);
    let reply = conn.run(&inv).await?;
    let bad = |b| conn.bad(b);
    let r = items(&reply).map_err(bad)?;
    match int(at(r, 0).map_err(bad)?).map_err(bad)? {
        -1 => {
            let head = int(at(r, 1).map_err(bad)?).map_err(bad)?;
            Err(Error::InvalidInput(format!(
                "cannot reset `{stream}` to {position}: the log's head is {head}; events past it do not exist yet"
            )))
        }
        -2 => Err(Error::UnknownQueue(stream.to_string())),
        _ => state(at(r, 1).map_err(bad)?).map_err(bad),
    }
}
