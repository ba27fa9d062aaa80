//! The event log in SQL: `act_append` (one round trip, one transaction) and
//! queries built from [`act::Query`].
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

use act::{Causation, Event, Meta, Query, StreamFilter};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

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

/// Decodes an event row whose first columns are [`COLUMNS`], from `at`.
pub(crate) fn event(row: &Row, at: usize) -> act::Result<Arc<Event>> {
    let id: i64 = row.try_get(at).map_err(|e| decode("an event id", e))?;
    let name: String = row
        .try_get(at + 3)
        .map_err(|e| decode(format!("event {id}"), e))?;
    let what = |field: &str| format!("the {field} of event {id} `{name}`");
    let causation: Option<Value> = row
        .try_get(at + 7)
        .map_err(|e| decode(what("causation"), e))?;
    let actor: Option<Value> = row.try_get(at + 8).map_err(|e| decode(what("actor"), e))?;
    Ok(Arc::new(Event {
        id,
        stream: row.try_get(at + 1).map_err(|e| decode(what("stream"), e))?,
        version: row
            .try_get(at + 2)
            .map_err(|e| decode(what("version"), e))?,
        data: row.try_get(at + 4).map_err(|e| decode(what("data"), e))?,
        meta: Meta {
            created: row
                .try_get::<_, DateTime<Utc>>(at + 5)
                .map_err(|e| decode(what("time"), e))?,
            correlation: row
                .try_get(at + 6)
                .map_err(|e| decode(what("correlation"), e))?,
            causation: match causation {
                Some(c) => serde_json::from_value(c).map_err(|e| decode(what("causation"), e))?,
                None => Causation::default(),
            },
            actor: match actor {
                Some(a) => serde_json::from_value(a).map_err(|e| decode(what("actor"), e))?,
                None => Default::default(),
            },
        },
        name,
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
