//! The event log on Redis: append (one script: key lookup, version check,
//! ids from `INCRBY`, records, stream index) and queries paged through the
//! stream index or the dense id range.
//!
//! Each event is one JSON record in the `events` hash under its id; the
//! stream's sorted set holds its ids (score = id, rank = version). Ids are
//! dense (1, 2, 3…) and assigned inside the append script, so an id becomes
//! visible only together with every lower id.

use std::sync::Arc;

use act::{
    Actor, ActualVersion, Append, Causation, Error, Event, ExpectedVersion, Meta, Query,
    StreamFilter,
};
use chrono::{DateTime, Utc};
use redis::Value;
use serde::Deserialize;

use crate::conn::Conn;
use crate::reply::{at, int, items, opt_bytes};
use crate::scripts;

/// Events read per round trip while paging.
const PAGE: usize = 500;

/// One stored event, as the append script writes it.
#[derive(Deserialize)]
struct Record {
    stream: String,
    version: i64,
    name: String,
    created: i64,
    correlation: String,
    #[serde(default)]
    causation: Causation,
    #[serde(default)]
    actor: Actor,
    data: serde_json::Value,
}

/// What can still be read of a record that is not an event: the fields
/// next to the data, each only when it has the right type. Unknown fields
/// (the data among them) are skipped without nesting limits.
#[derive(Deserialize, Default)]
struct Header {
    stream: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
    created: Option<serde_json::Value>,
    correlation: Option<serde_json::Value>,
}

/// Decodes the record of event `id`. A record that cannot be read back
/// (data nested deeper than serde_json reads, written before the limits;
/// a damaged or missing record) becomes an [`Event::undecodable`] carrying
/// the reason, with what can be read of its stream, version and name: a
/// read never fails for one bad record, and the broker blocks only the
/// queues it reaches (promise 11). `stream` is the stream the event was
/// read through, if any (its index knows it when the record does not).
pub(crate) fn decode(id: i64, raw: Option<&[u8]>, stream: Option<&str>) -> Arc<Event> {
    let known = || Header {
        stream: stream.map(|s| serde_json::Value::String(s.to_string())),
        ..Header::default()
    };
    let read = |raw: &[u8]| {
        let mut h: Header = serde_json::from_slice(raw).unwrap_or_default();
        if !matches!(h.stream, Some(serde_json::Value::String(_))) {
            h.stream = known().stream;
        }
        h
    };
    let Some(raw) = raw else {
        return undecodable(id, known(), "the log holds no record of it", "");
    };
    match serde_json::from_slice::<Record>(raw) {
        Ok(r) => match DateTime::<Utc>::from_timestamp_micros(r.created) {
            Some(created) => Arc::new(Event {
                id,
                stream: r.stream,
                version: r.version,
                name: r.name,
                data: r.data,
                meta: Meta {
                    created,
                    correlation: r.correlation,
                    causation: r.causation,
                    actor: r.actor,
                },
            }),
            None => {
                let why = format!("its time {} is out of range", r.created);
                undecodable(id, read(raw), &why, &String::from_utf8_lossy(raw))
            }
        },
        Err(e) => {
            let why = format!("its record cannot be read back ({e})");
            undecodable(id, read(raw), &why, &String::from_utf8_lossy(raw))
        }
    }
}

fn undecodable(id: i64, h: Header, why: &str, raw: &str) -> Arc<Event> {
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let number = |v: &Option<serde_json::Value>| v.as_ref().and_then(serde_json::Value::as_i64);
    let created = number(&h.created)
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .unwrap_or_default();
    let version = number(&h.version).unwrap_or(0);
    Arc::new(Event::undecodable(
        id,
        text(h.stream),
        version,
        text(h.name),
        created,
        text(h.correlation),
        why,
        raw,
    ))
}

fn json<T: serde::Serialize>(what: &str, v: &T) -> act::Result<String> {
    serde_json::to_string(v).map_err(|e| Error::decode(what, e))
}

/// Appends; returns the events and whether anything was written.
pub(crate) async fn append(conn: &Conn, a: Append) -> act::Result<(Vec<Arc<Event>>, bool)> {
    let correlation = a.correlation_or_new();
    let mut inv = conn.script(&scripts::APPEND);
    let (expected, version) = match a.expected {
        ExpectedVersion::Any => ("any", 0),
        ExpectedVersion::NoStream => ("none", 0),
        ExpectedVersion::Exact(v) => ("exact", v),
    };
    inv.arg(&a.stream)
        .arg(expected)
        .arg(version)
        .arg(if a.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        })
        .arg(a.idempotency_key.as_deref().unwrap_or(""))
        .arg(json("the stream name", &a.stream)?)
        .arg(json("the correlation", &correlation)?)
        .arg(json("the causation", &a.causation)?)
        .arg(json("the actor", &a.actor)?)
        .arg(a.messages.len());
    for m in &a.messages {
        inv.arg(json("an event name", &m.name)?)
            .arg(json(&format!("the data of `{}`", m.name), &m.data)?);
    }
    let reply = conn.run(&inv).await?;
    let bad = |b| conn.bad(b);
    let r = items(&reply).map_err(bad)?;
    match int(at(r, 0).map_err(bad)?).map_err(bad)? {
        0 => {
            let first = int(at(r, 1).map_err(bad)?).map_err(bad)?;
            let created = int(at(r, 2).map_err(bad)?).map_err(bad)?;
            let version = int(at(r, 3).map_err(bad)?).map_err(bad)?;
            let created = DateTime::<Utc>::from_timestamp_micros(created)
                .ok_or_else(|| conn.bad(format!("time {created} is out of range")))?;
            let meta = Meta {
                created,
                correlation,
                causation: a.causation,
                actor: a.actor,
            };
            let events = a
                .messages
                .into_iter()
                .zip(0..)
                .map(|(m, i)| {
                    Arc::new(Event {
                        id: first + i,
                        stream: a.stream.clone(),
                        version: version + i,
                        name: m.name,
                        data: m.data,
                        meta: meta.clone(),
                    })
                })
                .collect();
            Ok((events, true))
        }
        1 => {
            let first = int(at(r, 1).map_err(bad)?).map_err(bad)?;
            let events = r[3..]
                .iter()
                .zip(first..)
                .map(|(raw, id)| Ok(decode(id, opt_bytes(raw).map_err(bad)?, None)))
                .collect::<act::Result<_>>()?;
            Ok((events, false))
        }
        2 => {
            let actual = int(at(r, 1).map_err(bad)?).map_err(bad)?;
            Err(Error::Concurrency {
                stream: a.stream,
                expected: a.expected,
                actual: if actual < 0 {
                    ActualVersion::None
                } else {
                    ActualVersion::At(actual)
                },
            })
        }
        3 => Ok((Vec::new(), false)),
        code => Err(conn.bad(format!("append answered {code}"))),
    }
}

/// One page of ids and records, in read order; `stream` is the stream
/// whose index was read, if any.
fn page(conn: &Conn, reply: &Value, stream: Option<&str>) -> act::Result<Vec<Arc<Event>>> {
    let bad = |b| conn.bad(b);
    let r = items(reply).map_err(bad)?;
    let n = r.len().saturating_sub(1) / 2;
    (0..n)
        .map(|i| {
            let id = int(&r[1 + i]).map_err(bad)?;
            Ok(decode(id, opt_bytes(&r[1 + n + i]).map_err(bad)?, stream))
        })
        .collect()
}

/// Runs `q`: exact streams through their index, everything else through the
/// id range, in pages; filters the index cannot answer (names, pattern,
/// correlation, time) are applied here with [`Query::matches`].
pub(crate) async fn query(conn: &Conn, q: &Query) -> act::Result<Vec<Arc<Event>>> {
    let limit = q.limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    // Only the id bounds (and the stream, for the index) are applied in Redis.
    let exact = matches!(q.stream, Some(StreamFilter::Exact(_)));
    let filtered = !q.names.is_empty()
        || q.correlation.is_some()
        || q.created_after.is_some()
        || q.created_before.is_some()
        || (q.stream.is_some() && !exact);
    // Exclusive bounds.
    let mut lo = q.after.unwrap_or(0).max(0);
    let mut hi = q.before.unwrap_or(i64::MAX);
    while lo < hi.saturating_sub(1) {
        let want = if filtered {
            PAGE
        } else {
            (limit - out.len()).min(PAGE)
        };
        let mut inv = conn.script(&scripts::READ);
        match &q.stream {
            Some(StreamFilter::Exact(s)) => {
                inv.arg("stream").arg(s).arg(lo);
                if hi == i64::MAX {
                    inv.arg("+inf");
                } else {
                    inv.arg(hi);
                }
                inv.arg(if q.backward { "1" } else { "0" }).arg(want);
            }
            _ => {
                inv.arg("range")
                    .arg(lo + 1)
                    .arg(hi - 1)
                    .arg(if q.backward { "1" } else { "0" })
                    .arg(want);
            }
        }
        let stream = match &q.stream {
            Some(StreamFilter::Exact(s)) => Some(s.as_str()),
            _ => None,
        };
        let events = page(conn, &conn.run(&inv).await?, stream)?;
        let Some(last) = events.last() else {
            break;
        };
        if q.backward {
            hi = last.id;
        } else {
            lo = last.id;
        }
        let full = events.len() == want;
        for e in events {
            if q.matches(&e) {
                out.push(e);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok(out)
}
