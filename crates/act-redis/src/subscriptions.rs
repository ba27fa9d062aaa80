//! Subscriptions on Redis: one hash per reaction (`sub:{name}`: event names
//! as JSON, target, start, checkpoint, created, seen, retired) and a sorted
//! set of their names (`subs`, all scores 0, so `ZRANGE` lists them in byte
//! order). Retiring a reaction drops its pending items from every queue.

use act::{Error, Retired, Subscription, SubscriptionState};
use redis::Value;

use crate::conn::Conn;
use crate::reply::{at, int, items, opt_int, opt_text, text, time, Bad};
use crate::scripts;

/// Records new subscriptions and refreshes known ones; returns them all.
pub(crate) async fn subscribe(
    conn: &Conn,
    subscriptions: &[Subscription],
) -> act::Result<Vec<SubscriptionState>> {
    for s in subscriptions {
        act::limits::check_name("the reaction name", &s.name)?;
    }
    let mut inv = conn.script(&scripts::SUBSCRIBE);
    inv.arg(subscriptions.len());
    for s in subscriptions {
        let events = serde_json::to_string(&s.events)
            .map_err(|e| Error::decode(format!("the event names of `{}`", s.name), e))?;
        inv.arg(&s.name)
            .arg(events)
            .arg(if s.target.is_some() { "1" } else { "0" })
            .arg(s.target.as_deref().unwrap_or(""))
            .arg(s.start);
    }
    let reply = conn.run(&inv).await?;
    rows(conn, &reply)
}

/// Every subscription, ordered by name.
pub(crate) async fn list(conn: &Conn) -> act::Result<Vec<SubscriptionState>> {
    let reply = conn.run(&conn.script(&scripts::SUBSCRIPTIONS)).await?;
    rows(conn, &reply)
}

fn rows(conn: &Conn, reply: &Value) -> act::Result<Vec<SubscriptionState>> {
    let bad = |b| conn.bad(b);
    items(reply)
        .map_err(bad)?
        .iter()
        .map(|row| row_of(conn, row))
        .collect()
}

/// Reads one row of `subscriptions` in `common.lua`.
fn row_of(conn: &Conn, v: &Value) -> act::Result<SubscriptionState> {
    let parse = || -> Result<(SubscriptionState, String), Bad> {
        let r = items(v)?;
        let f = |i| at(r, i);
        Ok((
            SubscriptionState {
                name: text(f(0)?)?,
                events: Vec::new(),
                target: opt_text(f(2)?)?,
                start: int(f(3)?)?,
                checkpoint: int(f(4)?)?,
                created: time(int(f(5)?)?),
                seen: time(int(f(6)?)?),
                retired: opt_int(f(7)?)?.map(time),
            },
            text(f(1)?)?,
        ))
    };
    let (mut state, events) = parse().map_err(|b| conn.bad(b))?;
    state.events = serde_json::from_str(&events)
        .map_err(|e| Error::decode(format!("the event names of reaction `{}`", state.name), e))?;
    Ok(state)
}

/// Retires reactions (all or none: an unknown name changes nothing).
pub(crate) async fn retire(conn: &Conn, names: &[String]) -> act::Result<Vec<Retired>> {
    let mut inv = conn.script(&scripts::RETIRE);
    for n in names {
        inv.arg(n);
    }
    let reply = conn.run(&inv).await?;
    let bad = |b| conn.bad(b);
    let r = items(&reply).map_err(bad)?;
    if int(at(r, 0).map_err(bad)?).map_err(bad)? < 0 {
        let name = text(at(r, 1).map_err(bad)?).map_err(bad)?;
        return Err(Error::UnknownReaction(name));
    }
    let parse = |v: &Value| -> Result<Retired, Bad> {
        let e = items(v)?;
        Ok(Retired {
            name: text(at(e, 0)?)?,
            dropped: u64::try_from(int(at(e, 1)?)?).unwrap_or(0),
            queues: u64::try_from(int(at(e, 2)?)?).unwrap_or(0),
            newly: int(at(e, 3)?)? == 1,
        })
    };
    items(at(r, 1).map_err(bad)?)
        .map_err(bad)?
        .iter()
        .map(|v| parse(v).map_err(bad))
        .collect()
}
