//! The queue store port on PostgreSQL: correlation (`act_enqueue`), claim and
//! fetch in one statement, settle/renew/release as one function call per
//! batch, unblock, reset, listing. Every time is the database clock
//! (`now()`, plus the test offset).

use std::sync::Arc;
use std::time::Duration;

use act::{
    Batch, Claim, Error, Event, Lease, LeaseRef, Outcome, QueueFilter, QueueState, QueueStore,
    Rejection, Settlement, Work,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::events::{event, COLUMNS};
use crate::PgStore;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Turns a fence code from the SQL functions into a rejection.
fn rejection(
    stream: &str,
    token: i64,
    code: i32,
    current: Option<i64>,
    from: i64,
) -> Result<(), Rejection> {
    match code {
        0 => Ok(()),
        1 => Err(Rejection::Unknown(stream.to_string())),
        2 => Err(Rejection::Stale {
            stream: stream.to_string(),
            token,
            current: current.unwrap_or_default(),
        }),
        3 => Err(Rejection::Expired {
            stream: stream.to_string(),
            token,
        }),
        _ => Err(Rejection::Moved {
            stream: stream.to_string(),
            expected: from,
            actual: current.unwrap_or_default(),
        }),
    }
}

fn state(r: &Row) -> QueueState {
    QueueState {
        stream: r.get(0),
        position: r.get(1),
        head: r.get(2),
        next: r.get(3),
        lag: r.get::<_, i64>(4).max(0) as u64,
        priority: r.get(5),
        retries: r.get::<_, i32>(6).max(0) as u32,
        retry_at: r.get(7),
        blocked: r.get(8),
        error: r.get(9),
        token: r.get(10),
        lease_owner: r.get(11),
        lease_expires: r.get(12),
    }
}

impl PgStore {
    fn queues_sql(&self) -> String {
        let s = &self.schema;
        format!(
            "SELECT q.stream, q.position, q.head, q.next,
                    (SELECT count(*) FROM {s}.work w WHERE w.stream = q.stream AND w.event > q.position),
                    q.priority, q.retries, q.retry_at, q.blocked, q.error, q.token, q.lease_owner, q.lease_expires
             FROM {s}.queues q
             WHERE ($1::text IS NULL OR q.stream = $1) AND (NOT $2 OR q.blocked) AND (NOT $3 OR q.next IS NOT NULL)
             ORDER BY q.stream LIMIT $4::bigint"
        )
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn checkpoint(&self) -> act::Result<i64> {
        let sql = format!(
            "SELECT position FROM {}.checkpoint WHERE id = 1",
            self.schema
        );
        let client = self.client().await?;
        let row = client.query_one(&sql, &[]).await.map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    async fn enqueue(&self, work: &[Work], from: i64, to: i64) -> act::Result<i64> {
        if to < from {
            return Err(Error::InvalidInput(format!(
                "checkpoint cannot move backwards (from {from} to {to})"
            )));
        }
        let streams: Vec<&str> = work.iter().map(|w| w.stream.as_str()).collect();
        let events: Vec<i64> = work.iter().map(|w| w.event).collect();
        let priorities: Vec<i32> = work.iter().map(|w| w.priority).collect();
        let sql = format!("SELECT {}.act_enqueue($1, $2, $3, $4, $5)", self.schema);
        let cp: i64 = self
            .retrying(|client| {
                let (sql, streams, events, priorities) = (&sql, &streams, &events, &priorities);
                async move {
                    let stmt = client.prepare_cached(sql).await?;
                    let row = client
                        .query_one(&stmt, &[&from, &to, streams, events, priorities])
                        .await?;
                    Ok(row.get::<_, i64>(0))
                }
            })
            .await?;
        if cp == to && !work.is_empty() {
            self.notify();
        }
        Ok(cp)
    }

    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        let s = &self.schema;
        let sql = format!(
            "WITH picked AS (
                SELECT q.stream FROM {s}.queues q
                WHERE q.next IS NOT NULL AND NOT q.blocked
                  AND (q.lease_expires IS NULL OR q.lease_expires <= now() + $4::bigint * interval '1 microsecond')
                  AND (q.retry_at IS NULL OR q.retry_at <= now() + $4::bigint * interval '1 microsecond')
                ORDER BY q.priority DESC, q.next, q.stream
                LIMIT $1::bigint
                FOR UPDATE SKIP LOCKED
            ), leased AS (
                UPDATE {s}.queues q
                SET token = q.token + 1, lease_owner = $2,
                    lease_expires = now() + ($4::bigint + $3::bigint) * interval '1 microsecond'
                FROM picked WHERE q.stream = picked.stream
                RETURNING q.stream, q.position, q.retries, q.token, q.lease_expires, q.priority, q.next
            )
            SELECT l.stream, l.position, l.retries, l.token, l.lease_expires, {cols}
            FROM leased l
            LEFT JOIN LATERAL (
                SELECT ev.* FROM {s}.work w JOIN {s}.events ev ON ev.id = w.event
                WHERE w.stream = l.stream AND w.event > l.position
                ORDER BY w.event LIMIT $5::bigint
            ) e ON true
            ORDER BY l.priority DESC, l.next, l.stream, e.id",
            cols = COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
        );
        let queues = i64::try_from(claim.queues).unwrap_or(i64::MAX);
        let per_queue = i64::try_from(claim.events).unwrap_or(i64::MAX);
        let lease = micros(claim.lease);
        let offset = self.offset_us();
        let rows = self
            .retrying(|client| {
                let sql = &sql;
                async move {
                    let stmt = client.prepare_cached(sql).await?;
                    client
                        .query(&stmt, &[&queues, &claim.owner, &lease, &offset, &per_queue])
                        .await
                }
            })
            .await?;
        let mut out: Vec<Batch> = Vec::new();
        for r in &rows {
            let stream: String = r.get(0);
            if out.last().is_none_or(|b| b.lease.stream != stream) {
                out.push(Batch {
                    lease: Lease {
                        stream,
                        owner: claim.owner.clone(),
                        token: r.get(3),
                        expires: r.get::<_, DateTime<Utc>>(4),
                        position: r.get(1),
                        retries: r.get::<_, i32>(2).max(0) as u32,
                    },
                    events: Vec::new(),
                });
            }
            if r.get::<_, Option<i64>>(5).is_some() {
                let e: Arc<Event> = event(r, 5)?;
                if let Some(b) = out.last_mut() {
                    b.events.push(e);
                }
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        if let Some(s) = settlements.iter().find(|s| s.to < s.from) {
            return Err(Error::InvalidInput(format!(
                "settlement of `{}` moves its position backwards ({} to {})",
                s.lease.stream, s.from, s.to
            )));
        }
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let streams: Vec<&str> = settlements
            .iter()
            .map(|s| s.lease.stream.as_str())
            .collect();
        let tokens: Vec<i64> = settlements.iter().map(|s| s.lease.token).collect();
        let froms: Vec<i64> = settlements.iter().map(|s| s.from).collect();
        let tos: Vec<i64> = settlements.iter().map(|s| s.to).collect();
        let kinds: Vec<i16> = settlements
            .iter()
            .map(|s| match s.outcome {
                Outcome::Ack => 0,
                Outcome::Retry { .. } => 1,
                Outcome::Block { .. } => 2,
            })
            .collect();
        let delays: Vec<i64> = settlements
            .iter()
            .map(|s| match &s.outcome {
                Outcome::Retry { delay, .. } => micros(*delay),
                _ => 0,
            })
            .collect();
        let errors: Vec<Option<&str>> = settlements
            .iter()
            .map(|s| match &s.outcome {
                Outcome::Retry { error, .. } | Outcome::Block { error } => Some(error.as_str()),
                Outcome::Ack => None,
            })
            .collect();
        let offset = self.offset_us();
        let sql = format!(
            "SELECT * FROM {}.act_settle($1, $2, $3, $4, $5, $6, $7, $8)",
            self.schema
        );
        let rows = self
            .retrying(|client| {
                let sql = &sql;
                let args = (&streams, &tokens, &froms, &tos, &kinds, &delays, &errors);
                async move {
                    let stmt = client.prepare_cached(sql).await?;
                    client
                        .query(
                            &stmt,
                            &[
                                args.0, args.1, args.2, args.3, args.4, args.5, args.6, &offset,
                            ],
                        )
                        .await
                }
            })
            .await?;
        let mut more = false;
        let results: Vec<Result<(), Rejection>> = settlements
            .iter()
            .zip(&rows)
            .map(|(s, r)| {
                more |= r.get::<_, bool>(2);
                rejection(&s.lease.stream, s.lease.token, r.get(0), r.get(1), s.from)
            })
            .collect();
        // Claimable work left, or at least a lease freed: brokers here look
        // again at once; brokers elsewhere (catch_up waits for other brokers'
        // leases) within the soft pace. The notifier coalesces NOTIFYs, so
        // this costs no round trip here.
        if more || results.iter().any(Result::is_ok) {
            self.notify_soon();
        }
        Ok(results)
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let streams: Vec<&str> = leases.iter().map(|l| l.stream.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let (lease_us, offset) = (micros(lease), self.offset_us());
        let sql = format!("SELECT * FROM {}.act_renew($1, $2, $3, $4)", self.schema);
        let rows = self
            .retrying(|client| {
                let (sql, streams, tokens) = (&sql, &streams, &tokens);
                async move {
                    let stmt = client.prepare_cached(sql).await?;
                    client
                        .query(&stmt, &[streams, tokens, &lease_us, &offset])
                        .await
                }
            })
            .await?;
        Ok(leases
            .iter()
            .zip(&rows)
            .map(|(l, r)| rejection(&l.stream, l.token, r.get(0), r.get(1), 0).map(|()| r.get(2)))
            .collect())
    }

    async fn release(&self, leases: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let streams: Vec<&str> = leases.iter().map(|l| l.stream.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let sql = format!("SELECT * FROM {}.act_release($1, $2)", self.schema);
        let rows = self
            .retrying(|client| {
                let (sql, streams, tokens) = (&sql, &streams, &tokens);
                async move {
                    let stmt = client.prepare_cached(sql).await?;
                    client.query(&stmt, &[streams, tokens]).await
                }
            })
            .await?;
        let out: Vec<_> = leases
            .iter()
            .zip(&rows)
            .map(|(l, r)| rejection(&l.stream, l.token, r.get(0), r.get(1), 0))
            .collect();
        if out.iter().any(Result::is_ok) {
            self.notify();
        }
        Ok(out)
    }

    async fn unblock(&self, streams: &[String]) -> act::Result<Vec<String>> {
        let sql = format!(
            "UPDATE {}.queues SET blocked = false, retries = 0, retry_at = NULL, error = NULL, token = token + 1,
                 lease_owner = NULL, lease_expires = NULL
             WHERE stream = ANY ($1) AND blocked RETURNING stream",
            self.schema
        );
        let rows = self
            .retrying(|client| {
                let sql = &sql;
                async move { client.query(sql.as_str(), &[&streams]).await }
            })
            .await?;
        let done: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let out: Vec<String> = streams
            .iter()
            .filter(|s| done.contains(s))
            .cloned()
            .collect();
        if !out.is_empty() {
            self.notify();
        }
        Ok(out)
    }

    async fn reset(&self, stream: &str, position: i64) -> act::Result<QueueState> {
        if position < 0 {
            return Err(Error::InvalidInput(format!(
                "cannot reset `{stream}` to a negative position ({position})"
            )));
        }
        let s = &self.schema;
        let sql = format!(
            "UPDATE {s}.queues q SET position = $2, retries = 0, retry_at = NULL, blocked = false, error = NULL,
                 token = q.token + 1, lease_owner = NULL, lease_expires = NULL,
                 next = (SELECT min(w.event) FROM {s}.work w WHERE w.stream = $1 AND w.event > $2)
             WHERE q.stream = $1 RETURNING q.stream"
        );
        let n = self
            .retrying(|client| {
                let sql = &sql;
                async move { client.execute(sql.as_str(), &[&stream, &position]).await }
            })
            .await?;
        if n == 0 {
            return Err(Error::UnknownQueue(stream.to_string()));
        }
        self.notify();
        let filter = QueueFilter {
            stream: Some(stream.to_string()),
            ..Default::default()
        };
        self.queues(&filter)
            .await?
            .pop()
            .ok_or_else(|| Error::UnknownQueue(stream.to_string()))
    }

    async fn queues(&self, f: &QueueFilter) -> act::Result<Vec<QueueState>> {
        let limit = f.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.queues_sql())
            .await
            .map_err(|e| self.err(e))?;
        let rows = client
            .query(&stmt, &[&f.stream, &f.blocked, &f.pending, &limit])
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(state).collect())
    }

    async fn next_due(&self) -> act::Result<Option<Duration>> {
        let sql = format!(
            "SELECT (extract(epoch FROM
                        min(greatest(coalesce(retry_at, 'epoch'), coalesce(lease_expires, 'epoch')))
                        - (now() + $1::bigint * interval '1 microsecond')) * 1000000)::bigint
             FROM {}.queues WHERE next IS NOT NULL AND NOT blocked",
            self.schema
        );
        let client = self.client().await?;
        let row = client
            .query_one(&sql, &[&self.offset_us()])
            .await
            .map_err(|e| self.err(e))?;
        let us: Option<i64> = row.get(0);
        Ok(us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}
