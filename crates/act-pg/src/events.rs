//! The event log: the [`act::EventStore`] impl — appends as one call of
//! `act_append` (one round trip, one transaction), queries built from
//! [`act::Query`] — and the visibility bound that readers follow.
//!
//! Visibility: ids are `(transaction id << 16) + n`, assigned by the writing
//! transaction. A reader that follows ids (no exact stream) only reads ids
//! below a bound under which no event can commit later. First the cheap one,
//! `pg_snapshot_xmin(pg_current_snapshot()) << 16`: every transaction with a
//! smaller id has ended. Any transaction on the server holds it back, though
//! (a queue write, a migration in another schema), so when it hides committed
//! events the reader asks `act_visible()` for this schema's own bound (only
//! transactions appending to these events count) and reads again below that,
//! in a later statement ([`Bound::Given`]).
//! Reads of one stream need no such bound: a later version is written by a
//! transaction that started after the earlier one committed, so it has a
//! larger id.

use std::sync::Arc;
use std::time::Duration;

use act::{
    Append, Causation, Error, Event, EventStore, ExpectedVersion, Meta, Query, StreamFilter, Wake,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::{error, notify, Failure, PgStore};

/// Columns of an event row, in the order [`event`] reads them.
pub(crate) const COLUMNS: &str =
    "id, stream, version, name, data, created, correlation, causation, actor";

/// The server-wide bound below which every id is final (see the module docs).
pub(crate) const VISIBLE: &str = "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16)";

/// Which visibility bound a query respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// None: reads of one stream, backward reads, the naive negative control.
    Off,
    /// The server-wide bound, computed in the statement.
    Server,
    /// An id bound computed by an earlier statement (`act_visible() << 16`).
    Given(i64),
}

/// A jsonb (or json) value as the text the server sent, decoded by us: a
/// value the driver's decoder would refuse (nested past serde_json's
/// recursion limit, written before the limits existed) stays readable as
/// text.
struct RawJson<'a>(&'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJson<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // Binary jsonb is a version byte (1) and the JSON text.
        let text = if *ty == tokio_postgres::types::Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb encoding version".into()),
            }
        } else {
            raw
        };
        Ok(RawJson(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB || *ty == tokio_postgres::types::Type::JSON
    }
}

/// Decodes an event row whose first columns are [`COLUMNS`], from `at`.
/// An event whose payload, causation or actor cannot be decoded comes back
/// as [`Event::undecodable`] (the broker blocks only the queues it reaches);
/// a row that is not an event row at all is an error.
pub(crate) fn event(row: &Row, at: usize) -> act::Result<Arc<Event>> {
    let id: i64 = row.try_get(at).map_err(|e| decode("an event id", e))?;
    let name: String = row
        .try_get(at + 3)
        .map_err(|e| decode(format!("event {id}"), e))?;
    let what = |field: &str| format!("the {field} of event {id} `{name}`");
    let stream: String = row.try_get(at + 1).map_err(|e| decode(what("stream"), e))?;
    let version: i64 = row
        .try_get(at + 2)
        .map_err(|e| decode(what("version"), e))?;
    let created: DateTime<Utc> = row.try_get(at + 5).map_err(|e| decode(what("time"), e))?;
    let correlation: String = row
        .try_get(at + 6)
        .map_err(|e| decode(what("correlation"), e))?;
    let data: RawJson<'_> = row.try_get(at + 4).map_err(|e| decode(what("data"), e))?;
    let causation: Option<RawJson<'_>> = row
        .try_get(at + 7)
        .map_err(|e| decode(what("causation"), e))?;
    let actor: Option<RawJson<'_>> = row.try_get(at + 8).map_err(|e| decode(what("actor"), e))?;
    let decoded =
        (|| -> Result<(Value, Causation, act::Actor), (&'static str, serde_json::Error, &str)> {
            let data: Value = serde_json::from_str(data.0).map_err(|e| ("data", e, data.0))?;
            let causation = match causation {
                Some(c) => serde_json::from_str(c.0).map_err(|e| ("causation", e, c.0))?,
                None => Causation::default(),
            };
            let actor = match actor {
                Some(a) => serde_json::from_str(a.0).map_err(|e| ("actor", e, a.0))?,
                None => act::Actor::default(),
            };
            Ok((data, causation, actor))
        })();
    Ok(Arc::new(match decoded {
        Ok((data, causation, actor)) => Event {
            id,
            stream,
            version,
            name,
            data,
            meta: Meta {
                created,
                correlation,
                causation,
                actor,
            },
        },
        Err((field, e, raw)) => Event::undecodable(
            id,
            stream,
            version,
            name,
            created,
            correlation,
            format!("its {field}: {e}"),
            raw,
        ),
    }))
}

fn decode(what: impl Into<String>, e: impl std::fmt::Display) -> act::Error {
    act::Error::decode(what, e)
}

/// A query as SQL text and its parameters.
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Builds the SQL of `q` in `schema`. When bounded (a forward read across
/// streams, the way brokers follow the log), the statement also returns, in
/// its first two columns, the visibility bound and the highest committed id,
/// and only rows below the bound; it always returns at least one row (event
/// columns NULL when there is no event).
pub(crate) fn query(schema: &str, q: &Query, bound: Bound) -> Sql {
    let bounded = bound != Bound::Off;
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let mut arg = |v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        format!("${}", params.len())
    };
    let exact = matches!(q.stream, Some(StreamFilter::Exact(_)));
    match &q.stream {
        Some(StreamFilter::Exact(s)) => {
            conds.push(format!("stream = {}", arg(Box::new(s.clone()))))
        }
        Some(f @ StreamFilter::Pattern(_)) => conds.push(format!(
            "stream LIKE {} ESCAPE '\\'",
            arg(Box::new(f.to_like()))
        )),
        None => {}
    }
    if !q.names.is_empty() {
        conds.push(format!("name = ANY ({})", arg(Box::new(q.names.clone()))));
    }
    if let Some(a) = q.after {
        conds.push(format!("id > {}", arg(Box::new(a))));
    }
    if let Some(b) = q.before {
        conds.push(format!("id < {}", arg(Box::new(b))));
    }
    if let Some(t) = q.created_after {
        conds.push(format!("created >= {}", arg(Box::new(t))));
    }
    if let Some(t) = q.created_before {
        conds.push(format!("created < {}", arg(Box::new(t))));
    }
    if let Some(c) = &q.correlation {
        conds.push(format!("correlation = {}", arg(Box::new(c.clone()))));
    }
    if bounded {
        conds.push("id < b.bound".to_string());
    }
    let mut inner = format!("SELECT {COLUMNS} FROM {schema}.events");
    if !conds.is_empty() {
        inner.push_str(" WHERE ");
        inner.push_str(&conds.join(" AND "));
    }
    // Within one stream, version order is id order and (stream, version) is
    // indexed.
    let key = if exact { "version" } else { "id" };
    inner.push_str(&format!(
        " ORDER BY {key}{}",
        if q.backward { " DESC" } else { "" }
    ));
    if let Some(n) = q.limit {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        inner.push_str(&format!(" LIMIT {}", arg(Box::new(n))));
    }
    let bound = match bound {
        Bound::Off => None,
        Bound::Server => Some(VISIBLE.to_string()),
        Bound::Given(b) => Some(format!("{}::bigint", arg(Box::new(b)))),
    };
    let text = match bound {
        Some(bound) => format!(
            "WITH b AS (SELECT {bound} AS bound, (SELECT coalesce(max(id), 0) FROM {schema}.events) AS top)
             SELECT b.bound, b.top, e.* FROM b LEFT JOIN LATERAL ({inner}) e ON true"
        ),
        None => inner,
    };
    Sql { text, params }
}

/// True when `q` must respect the visibility bound: a forward read across
/// streams. Exact-stream reads are safe without it (see the module docs);
/// backward reads are snapshots, not cursors that follow the log.
pub(crate) fn follows_ids(q: &Query) -> bool {
    !q.backward && !matches!(q.stream, Some(StreamFilter::Exact(_)))
}

/// The visibility bound and the highest committed id of a bounded read.
fn bounds(rows: &[Row]) -> (i64, i64) {
    rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)))
}

/// True when a bounded read returned as many events as it asked for.
fn full(q: &Query, rows: &[Row]) -> bool {
    let events = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(2).is_some())
        .count();
    q.limit.is_some_and(|n| events >= n)
}

impl PgStore {
    fn bounded(&self) -> bool {
        !self.naive
    }

    /// This schema's own visibility bound as an event id (`act_visible()`:
    /// only transactions appending to these events hold it back). One round
    /// trip; it scans the server's lock table.
    async fn visible(&self) -> act::Result<i64> {
        let sql = format!("SELECT {}.act_visible()", self.schema);
        let rows = self.rows(&sql, &[]).await?;
        let xid: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(xid.max(0).saturating_mul(1 << 16))
    }
}

// Ids are (transaction id << 16) + n: an append holds fewer than 2^16 events.
const _: () = assert!(act::limits::MAX_EVENTS_PER_APPEND < 65_536);

/// How long a forward read waits for events committed before it to pass the
/// visibility bound (they are behind transactions still running).
const VISIBILITY_WAIT: Duration = Duration::from_millis(50);

#[async_trait]
impl EventStore for PgStore {
    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(self)
    }

    async fn append(&self, a: Append) -> act::Result<Vec<Arc<Event>>> {
        act::limits::check_append(&a)?;
        self.writable()?;
        let expected: Option<i64> = match a.expected {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(-1),
            ExpectedVersion::Exact(v) => Some(v),
        };
        let names: Vec<&str> = a.messages.iter().map(|m| m.name.as_str()).collect();
        let data: Vec<&Value> = a.messages.iter().map(|m| &m.data).collect();
        let causation = (a.causation != act::Causation::default())
            .then(|| serde_json::to_value(&a.causation))
            .transpose()
            .map_err(|e| Error::decode("causation", e))?;
        let actor = (a.actor != act::Actor::default())
            .then(|| serde_json::to_value(&a.actor))
            .transpose()
            .map_err(|e| Error::decode("actor", e))?;
        let correlation = a.correlation_or_new();
        let sql = format!(
            "SELECT {}, replay FROM {}.act_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            COLUMNS, self.schema
        );
        let offset = self.offset_us();
        let params: [&(dyn ToSql + Sync); 11] = [
            &a.stream,
            &expected,
            &names,
            &data,
            &correlation,
            &causation,
            &actor,
            &a.idempotency_key,
            &offset,
            &self.naive,
            &self.delay_ms,
        ];
        let mut attempts = 0;
        loop {
            match self.try_rows(&sql, &params).await {
                Ok(rows) => {
                    if rows.first().is_some_and(|r| r.get::<_, bool>(9)) {
                        // A used key: the first append's events, as stored.
                        return rows.iter().map(|r| event(r, 0)).collect();
                    }
                    // Our own events: the server sent only id, version and time.
                    let mut out = Vec::with_capacity(rows.len());
                    for (r, m) in rows.iter().zip(&a.messages) {
                        out.push(Arc::new(Event {
                            id: r.get(0),
                            stream: a.stream.clone(),
                            version: r.get(2),
                            name: m.name.clone(),
                            data: m.data.clone(),
                            meta: act::Meta {
                                created: r.get(5),
                                correlation: correlation.clone(),
                                causation: a.causation.clone(),
                                actor: a.actor.clone(),
                            },
                        }));
                    }
                    if !out.is_empty() {
                        self.notify_events();
                    }
                    return Ok(out);
                }
                Err(Failure::Driver(e)) if error::is_code(&e, "AC409") => {
                    let actual = e
                        .as_db_error()
                        .and_then(|d| d.message().parse::<i64>().ok());
                    return Err(Error::Concurrency {
                        stream: a.stream.clone(),
                        expected: a.expected,
                        actual: actual.into(),
                    });
                }
                Err(Failure::Driver(e)) if error::violates(&e, "events_stream_version") => {
                    // Appends to one stream take turns, so only a writer
                    // outside act_append can get here: report what it left.
                    let sql = format!(
                        "SELECT max(version) FROM {}.events WHERE stream = $1",
                        self.schema
                    );
                    let actual: Option<i64> = self
                        .rows(&sql, &[&a.stream])
                        .await?
                        .first()
                        .and_then(|r| r.get(0));
                    return Err(Error::Concurrency {
                        stream: a.stream.clone(),
                        expected: a.expected,
                        actual: actual.into(),
                    });
                }
                // A concurrent append with the same key (to another stream)
                // committed first: the next attempt returns its events.
                Err(Failure::Driver(e)) if error::violates(&e, "appends_pkey") && attempts < 5 => {
                    attempts += 1;
                }
                Err(f) => return Err(self.fail(f)),
            }
        }
    }

    async fn query(&self, q: &Query) -> act::Result<Vec<Arc<Event>>> {
        if q.limit == Some(0) {
            return Ok(Vec::new());
        }
        if !(self.bounded() && follows_ids(q)) {
            let rows = self.read(&query(&self.schema, q, Bound::Off)).await?;
            return rows.iter().map(|r| event(r, 0)).collect();
        }
        // Read your writes: wait (briefly) until every event committed before
        // this call is below the visibility bound.
        let server = query(&self.schema, q, Bound::Server);
        let waited_until = tokio::time::Instant::now() + VISIBILITY_WAIT;
        let mut target: Option<i64> = None;
        loop {
            let mut rows = self.read(&server).await?;
            let (mut bound, mut top) = bounds(&rows);
            let target = *target.get_or_insert(top);
            if bound <= target && !full(q, &rows) {
                // The server-wide bound hides committed events: this schema's
                // own bound, then a read below it in a later statement.
                let own = self.visible().await?;
                if own > bound {
                    rows = self
                        .read(&query(&self.schema, q, Bound::Given(own)))
                        .await?;
                    (bound, top) = bounds(&rows);
                }
            }
            if full(q, &rows) || bound > target || tokio::time::Instant::now() >= waited_until {
                if bound <= top {
                    // Committed events are still hidden behind a running
                    // transaction: wake brokers again shortly.
                    self.recheck.notify_one();
                }
                return rows
                    .iter()
                    .filter(|r| r.get::<_, Option<i64>>(2).is_some())
                    .map(|r| event(r, 2))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The highest committed event id. Readers that follow ids may see it a
    /// moment later, once older transactions have ended.
    async fn head(&self) -> act::Result<i64> {
        let sql = format!("SELECT coalesce(max(id), 0) FROM {}.events", self.schema);
        let rows = self.rows(&sql, &[]).await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    fn wake(&self) -> watch::Receiver<Wake> {
        if let Some(l) = &self.listener {
            if tokio::runtime::Handle::try_current().is_ok() {
                l.task.get_or_init(|| {
                    notify::listener(
                        l.config.clone(),
                        l.tls.clone(),
                        l.channel.clone(),
                        self.wake.clone(),
                    )
                });
            }
        }
        self.wake.subscribe()
    }
}
