//! Queues on Redis: claim with leases and fencing tokens, settle, renew,
//! release, unblock, listing, and when work comes due.
//!
//! Each queue is a hash (`q:{stream}`: position, work mark, priority,
//! retries, lapses, retry time, block, error, token, lease, floor, enqueue
//! counter, distinct pending events, waiting reaction, replay horizon, the
//! last event the latest claim handed out and the end of a lapsed batch
//! being walked one event at a time, see [`Lease::suspect`]) and a
//! sorted set of its pending items (`i:{stream}`, see `common.lua`). A
//! queue with deliverable work sits in exactly one index: `due` (claimable
//! now, members ordered by priority, then oldest pending event, then
//! stream), `waiting:{reaction}` (claimable by a broker that has that
//! reaction, same order) or `delayed` (leased or waiting for a retry, scored
//! by when that ends). Claim moves the `delayed` queues whose time has come
//! back to `due` and merges `due` with the waiting indexes of the broker's
//! reactions: its cost depends on the queues it examines, not on how many
//! queues exist. Times are the Redis server's `TIME` (plus the test
//! offset), read inside each script.

use std::sync::LazyLock;
use std::time::Duration;

use act::{
    Batch, Claim, Lease, LeaseRef, Outcome, Pending, QueueFilter, QueueState, Rejection, Settlement,
};
use chrono::{DateTime, Utc};
use redis::{ScriptInvocation, Value};

use crate::conn::Conn;
use crate::events::decode;
use crate::reply::{at, int, items, opt_bytes, opt_int, opt_text, text, time, Bad};
use crate::scripts;

/// Longest lease, retry delay or wait the store records (100 years): keeps
/// times well inside the 2^53 microseconds Lua numbers hold exactly.
const LONGEST_US: i64 = 100 * 365 * 24 * 3600 * 1_000_000;

/// Queues listed per round trip.
const LIST_PAGE: usize = 500;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(LONGEST_US)
}

/// A count for a script: Lua numbers print exactly only well below 2^53,
/// and no claim needs more than 2^31 queues or events.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX).min(1 << 31)
}

/// The lapse error's text around the owner's name, so the claim script
/// writes exactly [`act::queue::lapse_error`].
static LAPSE: LazyLock<(String, String)> = LazyLock::new(|| {
    const OWNER: &str = "\u{1}";
    let text = act::queue::lapse_error(OWNER);
    match text.split_once(OWNER) {
        Some((before, after)) => (before.to_string(), after.to_string()),
        None => (text, String::new()),
    }
});

pub(crate) async fn claim(conn: &Conn, c: &Claim) -> act::Result<Vec<Batch>> {
    let reply = conn.run(&claim_call(conn, c)).await?;
    claimed(conn, c, &reply)
}

/// Settles, then claims: both scripts in one pipeline (one round trip), run
/// by the server in that order. A script the server does not hold
/// (`NOSCRIPT`: after a restart or a `SCRIPT FLUSH`) runs again on its own,
/// which loads it. Returns each half's result and whether a settled queue
/// is claimable again.
#[allow(clippy::type_complexity)]
pub(crate) async fn settle_and_claim(
    conn: &Conn,
    settlements: &[Settlement],
    c: &Claim,
) -> (
    act::Result<(Vec<Result<(), Rejection>>, bool)>,
    act::Result<Vec<Batch>>,
) {
    let (settle, order) = settle_call(conn, settlements);
    let take = claim_call(conn, c);
    let (settle_reply, claim_reply) = match conn.run_two(&settle, &take).await {
        Ok(replies) => replies,
        Err(e) => return (Err(e), Ok(Vec::new())),
    };
    let settled = match settle_reply {
        Ok(reply) => settled(conn, settlements, &order, &reply),
        Err(e) if crate::conn::no_script(&e) => conn
            .run(&settle)
            .await
            .and_then(|reply| settled(conn, settlements, &order, &reply)),
        Err(e) => Err(conn.failed(e)),
    };
    let claimed_now = match claim_reply {
        Ok(reply) => claimed(conn, c, &reply),
        Err(e) if crate::conn::no_script(&e) && settled.is_ok() => conn
            .run(&take)
            .await
            .and_then(|reply| claimed(conn, c, &reply)),
        Err(e) if crate::conn::no_script(&e) => Ok(Vec::new()),
        Err(e) => Err(conn.failed(e)),
    };
    (settled, claimed_now)
}

/// The claim script's call.
fn claim_call(conn: &Conn, c: &Claim) -> ScriptInvocation<'static> {
    let mut inv = conn.script(&scripts::CLAIM);
    inv.arg(&c.owner)
        .arg(count(c.queues))
        .arg(count(c.events))
        .arg(micros(c.lease))
        .arg(&LAPSE.0)
        .arg(&LAPSE.1)
        .arg(c.reactions.len());
    for r in &c.reactions {
        inv.arg(r);
    }
    inv
}

/// The batches of a claim script's reply.
fn claimed(conn: &Conn, c: &Claim, reply: &Value) -> act::Result<Vec<Batch>> {
    let bad = |b| conn.bad(b);
    let mut out = Vec::new();
    for entry in items(reply).map_err(bad)? {
        let e = items(entry).map_err(bad)?;
        let count32 = |v: &Value| int(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let lease = (|| -> Result<Lease, Bad> {
            Ok(Lease {
                stream: text(at(e, 0)?)?,
                owner: c.owner.clone(),
                token: int(at(e, 1)?)?,
                expires: time(int(at(e, 2)?)?),
                position: int(at(e, 3)?)?,
                retries: count32(at(e, 4)?)?,
                lapses: count32(at(e, 5)?)?,
                mark: int(at(e, 6)?)?,
                suspect: int(at(e, 7)?)? != 0,
            })
        })()
        .map_err(bad)?;
        let ids = items(at(e, 8).map_err(bad)?).map_err(bad)?;
        let reactions = items(at(e, 9).map_err(bad)?).map_err(bad)?;
        let records = items(at(e, 10).map_err(bad)?).map_err(bad)?;
        if ids.len() != reactions.len() || ids.len() != records.len() {
            return Err(bad(format!(
                "claim of `{}` answered {} ids, {} reaction lists and {} records",
                lease.stream,
                ids.len(),
                reactions.len(),
                records.len()
            )));
        }
        let events = ids
            .iter()
            .zip(reactions)
            .zip(records)
            .map(|((id, rs), raw)| {
                let event = decode(int(id).map_err(bad)?, opt_bytes(raw).map_err(bad)?, None);
                let reactions = items(rs)
                    .map_err(bad)?
                    .iter()
                    .map(|r| text(r).map_err(bad))
                    .collect::<act::Result<Vec<String>>>()?;
                Ok(Pending { event, reactions })
            })
            .collect::<act::Result<Vec<Pending>>>()?;
        out.push(Batch { lease, events });
    }
    Ok(out)
}

/// Reads one `{code, detail}` verdict of the fencing rule.
fn verdict(v: &Value, stream: &str, token: i64, from: i64) -> Result<Result<i64, Rejection>, Bad> {
    let r = items(v)?;
    let detail = int(at(r, 1)?)?;
    Ok(match int(at(r, 0)?)? {
        0 => Ok(detail),
        1 => Err(Rejection::Unknown(stream.to_string())),
        2 => Err(Rejection::Stale {
            stream: stream.to_string(),
            token,
            current: detail,
        }),
        3 => Err(Rejection::Expired {
            stream: stream.to_string(),
            token,
        }),
        4 => Err(Rejection::Moved {
            stream: stream.to_string(),
            expected: from,
            actual: detail,
        }),
        code => return Err(format!("unknown verdict {code}")),
    })
}

/// Applies settlements; returns the results (in the order given) and
/// whether a settled queue is claimable again.
pub(crate) async fn settle(
    conn: &Conn,
    settlements: &[Settlement],
) -> act::Result<(Vec<Result<(), Rejection>>, bool)> {
    let (inv, order) = settle_call(conn, settlements);
    let reply = conn.run(&inv).await?;
    settled(conn, settlements, &order, &reply)
}

/// The settle script's call, and the order it applies the settlements in.
fn settle_call(conn: &Conn, settlements: &[Settlement]) -> (ScriptInvocation<'static>, Vec<usize>) {
    let order = act::queue::settle_order(settlements);
    let mut inv = conn.script(&scripts::SETTLE);
    inv.arg(settlements.len());
    for &i in &order {
        let s = &settlements[i];
        let (kind, delay, error) = match &s.outcome {
            Outcome::Ack => ("a", 0, ""),
            Outcome::Retry { delay, error } => ("r", micros(*delay), error.as_str()),
            Outcome::Block { error } => ("b", 0, error.as_str()),
            Outcome::Defer { delay } => ("d", micros(*delay), ""),
        };
        inv.arg(&s.lease.stream)
            .arg(s.lease.token)
            .arg(s.from)
            .arg(s.mark)
            .arg(s.acked.map(|a| a.to_string()).unwrap_or_default())
            .arg(kind)
            .arg(delay)
            .arg(error);
    }
    (inv, order)
}

/// The results of a settle script's reply, in the order given, and whether
/// a settled queue is claimable again.
fn settled(
    conn: &Conn,
    settlements: &[Settlement],
    order: &[usize],
    reply: &Value,
) -> act::Result<(Vec<Result<(), Rejection>>, bool)> {
    let bad = |b| conn.bad(b);
    let verdicts = items(reply).map_err(bad)?;
    if verdicts.len() != order.len() {
        return Err(bad(format!(
            "settle answered {} verdicts for {} settlements",
            verdicts.len(),
            order.len()
        )));
    }
    let mut results = vec![Ok(()); settlements.len()];
    let mut ok = false;
    for (&i, v) in order.iter().zip(verdicts) {
        let s = &settlements[i];
        results[i] = verdict(v, &s.lease.stream, s.lease.token, s.from)
            .map_err(bad)?
            .map(|_| ());
        ok |= results[i].is_ok();
    }
    Ok((results, ok))
}

pub(crate) async fn renew(
    conn: &Conn,
    leases: &[LeaseRef],
    lease: Duration,
) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
    let mut inv = conn.script(&scripts::RENEW);
    inv.arg(micros(lease));
    let verdicts = lease_verdicts(conn, inv, leases).await?;
    Ok(verdicts.into_iter().map(|v| v.map(time)).collect())
}

pub(crate) async fn release(
    conn: &Conn,
    leases: &[LeaseRef],
) -> act::Result<Vec<Result<(), Rejection>>> {
    let inv = conn.script(&scripts::RELEASE);
    let verdicts = lease_verdicts(conn, inv, leases).await?;
    Ok(verdicts.into_iter().map(|v| v.map(|_| ())).collect())
}

/// Runs a per-lease script (renew, release) with each lease's stream and
/// token appended to `inv`, and reads one verdict per lease.
async fn lease_verdicts(
    conn: &Conn,
    mut inv: ScriptInvocation<'static>,
    leases: &[LeaseRef],
) -> act::Result<Vec<Result<i64, Rejection>>> {
    for l in leases {
        inv.arg(&l.stream).arg(l.token);
    }
    let reply = conn.run(&inv).await?;
    let bad = |b| conn.bad(b);
    let verdicts = items(&reply).map_err(bad)?;
    leases
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let v = at(verdicts, i).map_err(bad)?;
            verdict(v, &l.stream, l.token, 0).map_err(bad)
        })
        .collect()
}

pub(crate) async fn unblock(conn: &Conn, streams: &[String]) -> act::Result<Vec<String>> {
    let mut inv = conn.script(&scripts::UNBLOCK);
    for s in streams {
        inv.arg(s);
    }
    let reply = conn.run(&inv).await?;
    let bad = |b| conn.bad(b);
    items(&reply)
        .map_err(bad)?
        .iter()
        .map(|v| text(v).map_err(bad))
        .collect()
}

/// Reads one row of `state` in `common.lua`.
pub(crate) fn state(v: &Value) -> Result<QueueState, Bad> {
    let r = items(v)?;
    let f = |i| at(r, i);
    Ok(QueueState {
        stream: text(f(0)?)?,
        position: int(f(1)?)?,
        head: int(f(2)?)?,
        next: opt_int(f(3)?)?,
        lag: u64::try_from(int(f(4)?)?).unwrap_or(0),
        priority: i32::try_from(int(f(5)?)?).map_err(|_| "priority out of range".to_string())?,
        retries: u32::try_from(int(f(6)?)?).unwrap_or(u32::MAX),
        retry_at: opt_int(f(7)?)?.map(time),
        blocked: int(f(8)?)? == 1,
        error: opt_text(f(9)?)?,
        token: int(f(10)?)?,
        lease_owner: opt_text(f(11)?)?,
        lease_expires: opt_int(f(12)?)?.map(time),
        waiting: opt_text(f(13)?)?,
        replay: opt_int(f(14)?)?,
    })
}

/// Pending items per reaction: the `pending` hash the scripts keep (one
/// `HGETALL`), ordered by name in byte order.
pub(crate) async fn pending_by_reaction(conn: &Conn) -> act::Result<Vec<(String, u64)>> {
    let reply = conn
        .command(redis::cmd("HGETALL").arg(conn.key("pending")))
        .await?;
    let pairs: Vec<(&Value, &Value)> = match &reply {
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        v => {
            let a = items(v).map_err(|b| conn.bad(b))?;
            a.chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let r = text(k).map_err(|b| conn.bad(b))?;
        let n = int(v).map_err(|b| conn.bad(b))?;
        if n > 0 {
            out.push((r, n.unsigned_abs()));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

pub(crate) async fn queues(conn: &Conn, filter: &QueueFilter) -> act::Result<Vec<QueueState>> {
    let limit = filter.limit.unwrap_or(usize::MAX);
    let keep = |q: &QueueState| {
        (!filter.blocked || q.blocked)
            && (!filter.pending || q.lag > 0)
            && filter
                .after
                .as_ref()
                .is_none_or(|a| q.stream.as_bytes() > a.as_bytes())
    };
    let bad = |b| conn.bad(b);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    if let Some(s) = &filter.stream {
        let mut inv = conn.script(&scripts::LIST);
        inv.arg("one").arg(s);
        for row in items(&conn.run(&inv).await?).map_err(bad)? {
            let q = state(row).map_err(bad)?;
            if keep(&q) && out.len() < limit {
                out.push(q);
            }
        }
        return Ok(out);
    }
    let index = if filter.blocked { "blocked" } else { "all" };
    let mut after = filter.after.clone().unwrap_or_default();
    while out.len() < limit {
        let mut inv = conn.script(&scripts::LIST);
        inv.arg(index).arg(&after).arg(LIST_PAGE);
        let reply = conn.run(&inv).await?;
        let rows = items(&reply).map_err(bad)?;
        for row in rows {
            let q = state(row).map_err(bad)?;
            after.clone_from(&q.stream);
            if keep(&q) && out.len() < limit {
                out.push(q);
            }
        }
        if rows.len() < LIST_PAGE {
            break;
        }
    }
    Ok(out)
}

pub(crate) async fn next_due(conn: &Conn, reactions: &[String]) -> act::Result<Option<Duration>> {
    let mut inv = conn.script(&scripts::NEXT_DUE);
    for r in reactions {
        inv.arg(r);
    }
    let us = int(&conn.run(&inv).await?).map_err(|b| conn.bad(b))?;
    Ok(u64::try_from(us).ok().map(Duration::from_micros))
}
