//! The event log in SQL: append (one `BEGIN IMMEDIATE` transaction, so ids are
//! assigned and committed in order and no reader ever sees a gap close behind
//! it) and queries built from [`act::Query`].

use std::sync::Arc;

use act::{Actor, Append, Causation, Error, Event, Meta, Query, StreamFilter};
use rusqlite::types::Value as Sql;
use rusqlite::{params, Transaction};

use crate::error::Failure;

pub(crate) const COLUMNS: &str =
    "id, stream, version, name, data, created, correlation, causation, actor";

/// Reads an event row selected with [`COLUMNS`] (optionally table-qualified).
pub(crate) fn event(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawEvent> {
    Ok(RawEvent {
        id: row.get(0)?,
        stream: row.get(1)?,
        version: row.get(2)?,
        name: row.get(3)?,
        data: row.get(4)?,
        created: row.get(5)?,
        correlation: row.get(6)?,
        causation: row.get(7)?,
        actor: row.get(8)?,
    })
}

/// An event row before its JSON is decoded.
pub(crate) struct RawEvent {
    id: i64,
    stream: String,
    version: i64,
    name: String,
    data: String,
    created: i64,
    correlation: String,
    causation: Option<String>,
    actor: Option<String>,
}

impl RawEvent {
    /// The event, or, when its stored data or meta cannot be read back
    /// (written before today's limits, or damaged), an
    /// [`Event::undecodable`] one carrying the reason: a read never fails
    /// for one bad row, and the broker blocks only the queues it reaches.
    pub(crate) fn decode(self) -> Arc<Event> {
        match self.parts() {
            Ok((data, causation, actor, created)) => Arc::new(Event {
                id: self.id,
                stream: self.stream,
                version: self.version,
                name: self.name,
                data,
                meta: Meta {
                    created,
                    correlation: self.correlation,
                    causation,
                    actor,
                },
            }),
            Err((error, raw)) => {
                let created =
                    chrono::DateTime::from_timestamp_micros(self.created).unwrap_or_default();
                Arc::new(Event::undecodable(
                    self.id,
                    self.stream,
                    self.version,
                    self.name,
                    created,
                    self.correlation,
                    error,
                    &raw,
                ))
            }
        }
    }

    /// The decoded data, causation, actor and time, or why not and the
    /// stored text that failed.
    #[allow(clippy::type_complexity)]
    fn parts(
        &self,
    ) -> Result<
        (
            serde_json::Value,
            Causation,
            Actor,
            chrono::DateTime<chrono::Utc>,
        ),
        (String, String),
    > {
        let data = serde_json::from_str(&self.data).map_err(|e| {
            (
                format!("its data is not valid JSON ({e})"),
                self.data.clone(),
            )
        })?;
        let causation = match &self.causation {
            Some(c) => serde_json::from_str(c)
                .map_err(|e| (format!("its causation cannot be read ({e})"), c.clone()))?,
            None => Causation::default(),
        };
        let actor = match &self.actor {
            Some(a) => serde_json::from_str(a)
                .map_err(|e| (format!("its actor cannot be read ({e})"), a.clone()))?,
            None => Actor::default(),
        };
        let created = chrono::DateTime::from_timestamp_micros(self.created).ok_or_else(|| {
            (
                format!("its creation time ({} µs) is out of range", self.created),
                self.created.to_string(),
            )
        })?;
        Ok((data, causation, actor, created))
    }
}

fn decode_all(rows: Vec<RawEvent>) -> Vec<Arc<Event>> {
    rows.into_iter().map(RawEvent::decode).collect()
}

fn range(tx: &Transaction, first: i64, last: i64) -> Result<Vec<Arc<Event>>, Failure> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE id BETWEEN ?1 AND ?2 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map(params![first, last], event)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(decode_all(rows))
}

/// Pre-encoded JSON of an append, so a retried transaction does not encode
/// again.
pub(crate) struct Encoded {
    pub append: Append,
    data: Vec<String>,
    causation: Option<String>,
    actor: Option<String>,
    correlation: String,
}

impl Encoded {
    pub(crate) fn new(append: Append) -> act::Result<Self> {
        let data = append
            .messages
            .iter()
            .map(|m| {
                serde_json::to_string(&m.data)
                    .map_err(|e| Error::decode(format!("the data of `{}`", m.name), e))
            })
            .collect::<act::Result<Vec<_>>>()?;
        let causation = if append.causation == Causation::default() {
            None
        } else {
            Some(
                serde_json::to_string(&append.causation)
                    .map_err(|e| Error::decode("causation", e))?,
            )
        };
        let actor = if append.actor == Default::default() {
            None
        } else {
            Some(serde_json::to_string(&append.actor).map_err(|e| Error::decode("actor", e))?)
        };
        let correlation = append.correlation_or_new();
        Ok(Encoded {
            append,
            data,
            causation,
            actor,
            correlation,
        })
    }
}

/// Appends within `tx` (a `BEGIN IMMEDIATE` transaction).
pub(crate) fn append(tx: &Transaction, e: &Encoded, now: i64) -> Result<Vec<Arc<Event>>, Failure> {
    let a = &e.append;
    if let Some(key) = &a.idempotency_key {
        let mut stmt = tx.prepare_cached("SELECT first, last FROM appends WHERE key = ?1")?;
        let mut rows = stmt.query(params![key])?;
        if let Some(row) = rows.next()? {
            let (first, last): (i64, i64) = (row.get(0)?, row.get(1)?);
            return range(tx, first, last);
        }
    }
    let actual: Option<i64> = {
        let mut stmt = tx.prepare_cached("SELECT max(version) FROM events WHERE stream = ?1")?;
        stmt.query_row(params![a.stream], |r| r.get(0))?
    };
    if !a.expected.matches(actual) {
        return Err(Failure::Act(Error::Concurrency {
            stream: a.stream.clone(),
            expected: a.expected,
            actual: actual.into(),
        }));
    }
    if a.messages.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(a.messages.len());
    let created = chrono::DateTime::from_timestamp_micros(now).unwrap_or_default();
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (stream, version, name, data, created, correlation, causation, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let first = actual.map_or(0, |v| v + 1);
    for (version, (m, data)) in (first..).zip(a.messages.iter().zip(&e.data)) {
        insert.execute(params![
            a.stream,
            version,
            m.name,
            data,
            now,
            e.correlation,
            e.causation,
            e.actor
        ])?;
        out.push(Arc::new(Event {
            id: tx.last_insert_rowid(),
            stream: a.stream.clone(),
            version,
            name: m.name.clone(),
            data: m.data.clone(),
            meta: Meta {
                created,
                correlation: e.correlation.clone(),
                causation: a.causation.clone(),
                actor: a.actor.clone(),
            },
        }));
    }
    if let (Some(key), Some(first), Some(last)) = (&a.idempotency_key, out.first(), out.last()) {
        tx.prepare_cached("INSERT INTO appends (key, first, last) VALUES (?1, ?2, ?3)")?
            .execute(params![key, first.id, last.id])?;
    }
    Ok(out)
}

/// A glob for SQLite's `GLOB`: `*` and `?` as given, `[` made literal.
fn glob(pattern: &str) -> String {
    pattern.replace('[', "[[]")
}

/// Runs `q` within a read transaction.
pub(crate) fn query(tx: &Transaction, q: &Query) -> Result<Vec<Arc<Event>>, Failure> {
    if q.limit == Some(0) {
        return Ok(Vec::new());
    }
    let mut sql = format!("SELECT {COLUMNS} FROM events");
    let mut args: Vec<Sql> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let arg = |v: Sql, args: &mut Vec<Sql>| {
        args.push(v);
        format!("?{}", args.len())
    };
    match &q.stream {
        Some(StreamFilter::Exact(s)) => {
            conds.push(format!("stream = {}", arg(Sql::Text(s.clone()), &mut args)))
        }
        Some(StreamFilter::Pattern(p)) => conds.push(format!(
            "stream GLOB {}",
            arg(Sql::Text(glob(p)), &mut args)
        )),
        None => {}
    }
    if !q.names.is_empty() {
        let list: Vec<String> = q
            .names
            .iter()
            .map(|n| arg(Sql::Text(n.clone()), &mut args))
            .collect();
        conds.push(format!("name IN ({})", list.join(", ")));
    }
    if let Some(a) = q.after {
        conds.push(format!("id > {}", arg(Sql::Integer(a), &mut args)));
    }
    if let Some(b) = q.before {
        conds.push(format!("id < {}", arg(Sql::Integer(b), &mut args)));
    }
    if let Some(t) = q.created_after {
        conds.push(format!(
            "created >= {}",
            arg(Sql::Integer(t.timestamp_micros()), &mut args)
        ));
    }
    if let Some(t) = q.created_before {
        conds.push(format!(
            "created < {}",
            arg(Sql::Integer(t.timestamp_micros()), &mut args)
        ));
    }
    if let Some(c) = &q.correlation {
        conds.push(format!(
            "correlation = {}",
            arg(Sql::Text(c.clone()), &mut args)
        ));
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    // Within one stream, version order is id order, and (stream, version) is
    // indexed: ordering by version reads only the rows returned.
    let key = if matches!(q.stream, Some(StreamFilter::Exact(_))) {
        "version"
    } else {
        "id"
    };
    sql.push_str(&format!(
        " ORDER BY {key}{}",
        if q.backward { " DESC" } else { "" }
    ));
    if let Some(n) = q.limit {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        sql.push_str(&format!(" LIMIT {}", arg(Sql::Integer(n), &mut args)));
    }
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), event)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(decode_all(rows))
}

/// The highest event id (0 when empty).
pub(crate) fn head(tx: &Transaction) -> Result<i64, Failure> {
    Ok(tx.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?)
}
