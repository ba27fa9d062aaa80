//! The queue store port on PostgreSQL: claim (`act_claim`), settle, renew,
//! release and reset as one function call each, unblock as one statement,
//! listings from the `queue_states` view. Subscriptions and correlation are
//! in `subscriptions.rs`. Every time is the database clock (`now()`, plus
//! the test offset).

use std::sync::Arc;
use std::time::Duration;

use act::{
    Batch, Claim, Correlation, Error, Lease, LeaseRef, Outcome, Pending, QueueFilter, QueueState,
    QueueStore, Rejection, Replay, Retired, SettledAndClaimed, Settlement, Subscription,
    SubscriptionState,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error;
use crate::events::event;
use crate::{Failure, PgStore};

/// The longest lease or retry delay written: a hundred years. Longer ones
/// (`Duration::MAX`) would overflow the database's timestamps; this is as
/// good as forever.
const FOREVER_US: i64 = 100 * 366 * 24 * 3600 * 1_000_000;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(FOREVER_US)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Turns a fence code from the SQL functions into a rejection.
pub(crate) fn rejection(
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

/// The columns of `queue_states`, in the order [`state`] reads them.
const STATE: &str =
    "stream, position, head, next, lag, priority, retries, retry_at, blocked, error, \
                     token, lease_owner, lease_expires, waiting, replay";

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
        waiting: r.get(13),
        replay: r.get(14),
    }
}

/// The SQL of a listing and its parameters: only the filters given, so each
/// shape gets its own plan (an exact stream is an index lookup, a page an
/// index range).
fn listing<'a>(
    schema: &str,
    f: &'a QueueFilter,
    limit: &'a i64,
) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<&'a (dyn ToSql + Sync)> = Vec::new();
    if let Some(s) = &f.stream {
        params.push(s);
        conds.push(format!("stream = ${}", params.len()));
    }
    if let Some(a) = &f.after {
        params.push(a);
        conds.push(format!("stream > ${}", params.len()));
    }
    if f.blocked {
        conds.push("blocked".into());
    }
    if f.pending {
        conds.push("next IS NOT NULL".into());
    }
    let mut sql = format!("SELECT {STATE} FROM {schema}.queue_states");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY stream COLLATE \"C\"");
    if f.limit.is_some() {
        params.push(limit);
        sql.push_str(&format!(" LIMIT ${}", params.len()));
    }
    (sql, params)
}

/// The lapse error of the core split around the owner, so the SQL function
/// writes the same text as every other backend.
fn lapse_parts() -> (String, String) {
    const MARK: &str = "\u{1}";
    let text = act::queue::lapse_error(MARK);
    match text.split_once(MARK) {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (text, String::new()),
    }
}

/// A claim's parameters, owned so that a call can send them beside others.
struct ClaimArgs {
    queues: i32,
    per_queue: i32,
    lease: i64,
    prefix: String,
    suffix: String,
    offset: i64,
    /// How many queues the fold before the claim takes: about twice what
    /// the claim may lease.
    fold: usize,
}

impl ClaimArgs {
    fn new(store: &PgStore, claim: &Claim) -> Self {
        let (prefix, suffix) = lapse_parts();
        ClaimArgs {
            queues: count(claim.queues),
            per_queue: count(claim.events.max(1)),
            lease: micros(claim.lease),
            prefix,
            suffix,
            offset: store.offset_us(),
            fold: claim.queues.saturating_mul(2).clamp(8, 10_000),
        }
    }

    fn params<'a>(&'a self, claim: &'a Claim) -> [&'a (dyn ToSql + Sync); 8] {
        [
            &claim.owner,
            &self.queues,
            &self.per_queue,
            &self.lease,
            &claim.reactions,
            &self.prefix,
            &self.suffix,
            &self.offset,
        ]
    }
}

/// The batches of a claim's rows (one row per event, grouped by queue).
fn batches(claim: &Claim, rows: &[Row]) -> act::Result<Vec<Batch>> {
    let mut out: Vec<Batch> = Vec::new();
    for r in rows {
        let stream: String = r.get(0);
        if out.last().is_none_or(|b| b.lease.stream != stream) {
            out.push(Batch {
                lease: Lease {
                    stream,
                    owner: claim.owner.clone(),
                    token: r.get(1),
                    expires: r.get::<_, DateTime<Utc>>(2),
                    position: r.get(3),
                    retries: r.get::<_, i32>(4).max(0) as u32,
                    lapses: r.get::<_, i32>(5).max(0) as u32,
                    mark: r.get(6),
                    suspect: r.get(7),
                },
                events: Vec::new(),
            });
        }
        let e: Arc<act::Event> = event(r, 8)?;
        let reactions: Vec<String> = r.get(17);
        if let Some(b) = out.last_mut() {
            b.events.push(Pending {
                event: e,
                reactions,
            });
        }
    }
    Ok(out)
}

/// A settle's parameters in the order the store applies them (blocks
/// first, then acks, retries and deferrals: the core's order).
struct SettleArgs {
    order: Vec<usize>,
    streams: Vec<String>,
    tokens: Vec<i64>,
    froms: Vec<i64>,
    marks: Vec<i64>,
    acked: Vec<Option<i64>>,
    kinds: Vec<i16>,
    delays: Vec<i64>,
    errors: Vec<Option<String>>,
    offset: i64,
}

impl SettleArgs {
    fn new(store: &PgStore, settlements: &[Settlement]) -> Self {
        let order = act::queue::settle_order(settlements);
        let ordered: Vec<&Settlement> = order.iter().map(|&i| &settlements[i]).collect();
        SettleArgs {
            streams: ordered.iter().map(|s| s.lease.stream.clone()).collect(),
            tokens: ordered.iter().map(|s| s.lease.token).collect(),
            froms: ordered.iter().map(|s| s.from).collect(),
            marks: ordered.iter().map(|s| s.mark).collect(),
            acked: ordered.iter().map(|s| s.acked).collect(),
            kinds: ordered
                .iter()
                .map(|s| match s.outcome {
                    Outcome::Ack => 0,
                    Outcome::Retry { .. } => 1,
                    Outcome::Block { .. } => 2,
                    Outcome::Defer { .. } => 3,
                })
                .collect(),
            delays: ordered
                .iter()
                .map(|s| match &s.outcome {
                    Outcome::Retry { delay, .. } | Outcome::Defer { delay } => micros(*delay),
                    _ => 0,
                })
                .collect(),
            errors: ordered
                .iter()
                .map(|s| match &s.outcome {
                    Outcome::Retry { error, .. } | Outcome::Block { error } => Some(error.clone()),
                    Outcome::Ack | Outcome::Defer { .. } => None,
                })
                .collect(),
            offset: store.offset_us(),
            order,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.streams,
            &self.tokens,
            &self.froms,
            &self.marks,
            &self.acked,
            &self.kinds,
            &self.delays,
            &self.errors,
            &self.offset,
        ]
    }
}

impl PgStore {
    fn claim_sql(&self) -> String {
        format!(
            "SELECT * FROM {}.act_claim($1, $2, $3, $4, $5, $6, $7, $8)",
            self.schema
        )
    }

    fn settle_sql(&self) -> String {
        format!(
            "SELECT * FROM {}.act_settle($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.schema
        )
    }
}

/// The results of a settle's rows, one per settlement in the order given,
/// and whether to wake brokers (work may be claimable).
fn settle_results(
    settlements: &[Settlement],
    args: &SettleArgs,
    rows: &[Row],
) -> (Vec<Result<(), Rejection>>, bool) {
    let mut results: Vec<Result<(), Rejection>> = vec![Ok(()); settlements.len()];
    let mut more = false;
    for (&i, r) in args.order.iter().zip(rows) {
        let s = &settlements[i];
        more |= r.get::<_, bool>(2);
        results[i] = rejection(&s.lease.stream, s.lease.token, r.get(0), r.get(1), s.from);
    }
    // Claimable work left, or at least a lease freed: brokers here look
    // again at once; brokers elsewhere (settle waits for other brokers'
    // leases) within the soft pace. The notifier coalesces NOTIFYs, so
    // this costs no round trip here.
    let wake = more || results.iter().any(Result::is_ok);
    (results, wake)
}

#[async_trait]
impl QueueStore for PgStore {
    async fn legacy_checkpoint(&self) -> act::Result<i64> {
        self.legacy().await
    }

    async fn subscribe(
        &self,
        subscriptions: &[Subscription],
    ) -> act::Result<Vec<SubscriptionState>> {
        self.register(subscriptions).await
    }

    async fn subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        self.list_subscriptions().await
    }

    async fn retire(&self, names: &[String]) -> act::Result<Vec<Retired>> {
        self.retire_all(names).await
    }

    async fn enqueue(&self, step: &Correlation) -> act::Result<act::Enqueued> {
        self.correlate(step).await
    }

    async fn replays(&self) -> act::Result<Vec<Replay>> {
        self.list_replays().await
    }

    async fn claim(&self, claim: &Claim) -> act::Result<Vec<Batch>> {
        self.writable()?;
        if claim.queues == 0 {
            return Ok(Vec::new());
        }
        let args = ClaimArgs::new(self, claim);
        let rows = self
            .rows_folded(Some(args.fold), &self.claim_sql(), &args.params(claim))
            .await?;
        batches(claim, &rows)
    }

    async fn settle(&self, settlements: &[Settlement]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.writable()?;
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let args = SettleArgs::new(self, settlements);
        let rows = self.rows(&self.settle_sql(), &args.params()).await?;
        let (results, wake) = settle_results(settlements, &args, &rows);
        if wake {
            self.notify_soon();
        }
        Ok(results)
    }

    /// The settle, the fold of the claim and the claim pipelined on one
    /// connection: one round trip, run by the server in that order, each in
    /// a transaction of its own. A half that failed on a serialization
    /// failure or a deadlock runs again on its own (with the retries every
    /// call has).
    async fn settle_and_claim(
        &self,
        settlements: &[Settlement],
        claim: &Claim,
    ) -> SettledAndClaimed {
        if settlements.is_empty() || claim.queues == 0 || self.read_only {
            return act::queue::settle_then_claim(self, settlements, claim).await;
        }
        let (settle, take) = (
            SettleArgs::new(self, settlements),
            ClaimArgs::new(self, claim),
        );
        let (settle_sql, claim_sql) = (self.settle_sql(), self.claim_sql());
        let fold = self.fold_sql(Some(take.fold));
        let ran = match self.conn().await {
            Ok(client) => client
                .pipelined(
                    (&settle_sql, &settle.params()),
                    &fold,
                    (&claim_sql, &take.params(claim)),
                )
                .await
                .map_err(|e| self.err(e)),
            Err(e) => Err(e),
        };
        let (settled, folded, claimed) = match ran {
            Ok(ran) => ran,
            // Nothing ran.
            Err(e) => {
                return SettledAndClaimed {
                    settled: Err(e),
                    claimed: Ok(Vec::new()),
                }
            }
        };
        if let Some(e) = folded {
            tracing::warn!(store = %self.name, error = %e, "folding correlation's news into the queue rows failed; a later call folds them");
        }
        let (settled, wake) = match settled {
            Ok(rows) => {
                let (results, wake) = settle_results(settlements, &settle, &rows);
                (Ok(results), wake)
            }
            // Runs again alone, and wakes as a settle does.
            Err(e) if error::is_retryable(&e) => (self.settle(settlements).await, false),
            Err(e) => (Err(self.err(e)), false),
        };
        let claimed = match claimed {
            Ok(rows) => batches(claim, &rows),
            Err(e) if error::is_retryable(&e) && settled.is_ok() => self.claim(claim).await,
            Err(e) => Err(self.err(e)),
        };
        let freed = settled.as_ref().is_ok_and(|results| {
            act::queue::settle_frees_work(settlements, results, claim, &claimed)
        });
        if wake && freed {
            self.notify_soon();
        }
        SettledAndClaimed { settled, claimed }
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> act::Result<Vec<Result<DateTime<Utc>, Rejection>>> {
        self.writable()?;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let streams: Vec<&str> = leases.iter().map(|l| l.stream.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let (lease_us, offset) = (micros(lease), self.offset_us());
        let sql = format!("SELECT * FROM {}.act_renew($1, $2, $3, $4)", self.schema);
        let rows = self
            .rows(&sql, &[&streams, &tokens, &lease_us, &offset])
            .await?;
        Ok(leases
            .iter()
            .zip(&rows)
            .map(|(l, r)| rejection(&l.stream, l.token, r.get(0), r.get(1), 0).map(|()| r.get(2)))
            .collect())
    }

    async fn release(&self, leases: &[LeaseRef]) -> act::Result<Vec<Result<(), Rejection>>> {
        self.writable()?;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let streams: Vec<&str> = leases.iter().map(|l| l.stream.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let sql = format!("SELECT * FROM {}.act_release($1, $2)", self.schema);
        let rows = self.rows(&sql, &[&streams, &tokens]).await?;
        let out: Vec<_> = leases
            .iter()
            .zip(&rows)
            .map(|(l, r)| rejection(&l.stream, l.token, r.get(0), r.get(1), 0))
            .collect();
        if out.iter().any(Result::is_ok) {
            self.notify_work();
        }
        Ok(out)
    }

    async fn unblock(&self, streams: &[String]) -> act::Result<Vec<String>> {
        self.writable()?;
        let s = &self.schema;
        // One statement; the rows are locked in stream order, like everywhere.
        let sql = format!(
            "WITH l AS (SELECT q.stream FROM {s}.queues q WHERE q.stream = ANY ($1) AND q.blocked
                        ORDER BY q.stream FOR UPDATE)
             UPDATE {s}.queues q SET blocked = false, retries = 0, lapses = 0, retry_at = NULL, error = NULL,
                 waiting = NULL, token = q.token + 1, lease_owner = NULL, lease_expires = NULL
             FROM l WHERE q.stream = l.stream AND q.blocked RETURNING q.stream"
        );
        let rows = self.rows(&sql, &[&streams]).await?;
        let done: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut out: Vec<String> = Vec::new();
        for s in streams {
            if done.contains(s) && !out.contains(s) {
                out.push(s.clone());
            }
        }
        if !out.is_empty() {
            self.notify_work();
        }
        Ok(out)
    }

    async fn reset(&self, stream: &str, position: i64) -> act::Result<QueueState> {
        if position < 0 {
            return Err(Error::InvalidInput(format!(
                "cannot reset `{stream}` to a negative position ({position})"
            )));
        }
        self.writable()?;
        let sql = format!("SELECT {STATE} FROM {}.act_reset($1, $2)", self.schema);
        let rows = match self.try_rows(&sql, &[&stream, &position]).await {
            Ok(rows) => rows,
            Err(Failure::Driver(e)) if error::is_code(&e, "AC404") => {
                return Err(Error::UnknownQueue(stream.to_string()))
            }
            Err(Failure::Driver(e)) if error::is_code(&e, "AC422") => {
                let head = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                return Err(Error::InvalidInput(format!(
                    "cannot reset `{stream}` to {position}: the log's head is {head}; events past it do not exist yet"
                )));
            }
            Err(f) => return Err(self.fail(f)),
        };
        self.notify_events();
        rows.first()
            .map(state)
            .ok_or_else(|| Error::UnknownQueue(stream.to_string()))
    }

    async fn queues(&self, f: &QueueFilter) -> act::Result<Vec<QueueState>> {
        let limit = f
            .limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let (sql, params) = listing(&self.schema, f, &limit);
        let rows = self.rows_folded(None, &sql, &params).await?;
        Ok(rows.iter().map(state).collect())
    }

    async fn pending_by_reaction(&self) -> act::Result<Vec<(String, u64)>> {
        // COLLATE "C" on the column: byte order, as the port promises.
        let sql = format!(
            "SELECT reaction, count(*) FROM {}.items GROUP BY reaction ORDER BY reaction",
            self.schema
        );
        let rows = self.rows(&sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let n: i64 = r.get(1);
                (r.get::<_, String>(0), n.max(0).unsigned_abs())
            })
            .collect())
    }

    async fn next_due(&self, reactions: &[String]) -> act::Result<Option<Duration>> {
        let sql = format!(
            "WITH c AS (SELECT now() + $1::bigint * interval '1 microsecond' AS now)
             SELECT (extract(epoch FROM
                        min(greatest(c.now, coalesce(q.retry_at, c.now), coalesce(q.lease_expires, c.now)) - c.now))
                     * 1000000)::bigint
             FROM {}.queues q, c
             WHERE q.next IS NOT NULL AND NOT q.blocked AND (q.replay IS NULL OR q.next <= q.replay)
               AND (q.waiting IS NULL OR q.waiting = ANY ($2))",
            self.schema
        );
        let rows = self
            .rows_folded(None, &sql, &[&self.offset_us(), &reactions])
            .await?;
        let us: Option<i64> = rows.first().and_then(|r| r.get(0));
        Ok(us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lapse_text_is_the_cores() {
        let (a, b) = lapse_parts();
        assert_eq!(format!("{a}o-1{b}"), act::queue::lapse_error("o-1"));
    }

    #[test]
    fn huge_durations_are_capped() {
        assert_eq!(micros(Duration::MAX), FOREVER_US);
        assert_eq!(micros(Duration::from_secs(2)), 2_000_000);
    }

    #[test]
    fn listings_send_only_the_filters_given() {
        let limit = 5;
        let f = QueueFilter {
            after: Some("a".into()),
            limit: Some(5),
            pending: true,
            ..Default::default()
        };
        let (sql, params) = listing("s", &f, &limit);
        assert_eq!(params.len(), 2);
        assert!(
            sql.contains("stream > $1")
                && sql.contains("LIMIT $2")
                && sql.contains("next IS NOT NULL"),
            "{sql}"
        );
        let none = QueueFilter::default();
        let (sql, params) = listing("s", &none, &limit);
        assert!(
            params.is_empty() && !sql.contains("WHERE") && !sql.contains("LIMIT"),
            "{sql}"
        );
    }
}
