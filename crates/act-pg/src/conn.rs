//! A pooled connection that is dropped, not returned to the pool, after an
//! error that may have left it unusable (see [`crate::error::classify`]):
//! a closed socket, a server shutting down, a session stuck read-only (a
//! demoted primary), a failed transaction. The pool's own recycling check
//! only notices closed sockets; this notices the rest, so the next call gets
//! a fresh session.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

use crate::error;

/// A connection checked out of the pool for one call.
pub(crate) struct Conn {
    object: Option<Object>,
    bad: AtomicBool,
}

impl Conn {
    pub(crate) fn new(object: Object) -> Self {
        Conn {
            object: Some(object),
            bad: AtomicBool::new(false),
        }
    }

    fn client(&self) -> &Object {
        // Only Drop takes the object out.
        self.object.as_ref().expect("a checked-out connection")
    }

    /// Passes `r` through, remembering to drop the connection when its error
    /// says so.
    pub(crate) fn watch<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &r {
            if error::discards(e) {
                self.bad.store(true, Ordering::Relaxed);
            }
        }
        r
    }

    /// Marks the connection as unfit for the pool.
    pub(crate) fn discard(&self) {
        self.bad.store(true, Ordering::Relaxed);
    }

    /// Runs a statement (prepared once per connection) and returns its rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let r = async {
            let stmt = self.client().prepare_cached(sql).await?;
            self.client().query(&stmt, params).await
        }
        .await;
        self.watch(r)
    }

    /// Runs `first` (no parameters) and then `sql`, pipelined: both are sent
    /// at once, so the pair costs one round trip, and each runs in a
    /// transaction of its own, `first`'s committed before `sql` starts.
    /// Returns `sql`'s rows and, beside them, `first`'s error if it failed:
    /// `sql` ran whatever `first` did, and what it wrote (a claim's leases)
    /// must reach the caller.
    pub(crate) async fn query_after(
        &self,
        first: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<Row>, Option<Error>), Error> {
        let r = async {
            let (a, b) = tokio::join!(
                self.client().prepare_cached(first),
                self.client().prepare_cached(sql)
            );
            let (a, b) = (a?, b?);
            let (before, rows) = tokio::join!(
                self.client().query(&a, &[]),
                self.client().query(&b, params)
            );
            Ok((rows?, before.err()))
        }
        .await;
        match self.watch(r) {
            Ok((rows, Some(e))) => {
                let e = self.watch(Err::<(), _>(e)).err();
                Ok((rows, e))
            }
            other => other,
        }
    }

    /// Runs `first`, then `fold` (no parameters), then `sql`, pipelined:
    /// sent at once (one round trip), run in that order, each in a
    /// transaction of its own. Returns each statement's own result (`fold`'s
    /// error only); `Err` when none ran (a statement could not be prepared
    /// or the connection failed before).
    #[allow(clippy::type_complexity)]
    pub(crate) async fn pipelined(
        &self,
        first: (&str, &[&(dyn ToSql + Sync)]),
        fold: &str,
        sql: (&str, &[&(dyn ToSql + Sync)]),
    ) -> Result<
        (
            Result<Vec<Row>, Error>,
            Option<Error>,
            Result<Vec<Row>, Error>,
        ),
        Error,
    > {
        let c = self.client();
        let (a, f, b) = tokio::join!(
            c.prepare_cached(first.0),
            c.prepare_cached(fold),
            c.prepare_cached(sql.0)
        );
        let (a, f, b) = match (a, f, b) {
            (Ok(a), Ok(f), Ok(b)) => (a, f, b),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return self.watch(Err(e)),
        };
        let (first, folded, rows) =
            tokio::join!(c.query(&a, first.1), c.query(&f, &[]), c.query(&b, sql.1));
        let folded = folded.err().and_then(|e| self.watch(Err::<(), _>(e)).err());
        Ok((self.watch(first), folded, self.watch(rows)))
    }

    /// Runs statements without parameters (not prepared).
    pub(crate) async fn batch(&self, sql: &str) -> Result<(), Error> {
        let r = self.client().batch_execute(sql).await;
        self.watch(r)
    }

    /// The pooled object, for calls that need the whole client (migrations).
    pub(crate) fn object_mut(&mut self) -> &mut Object {
        self.object.as_mut().expect("a checked-out connection")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.bad.load(Ordering::Relaxed) {
            if let Some(object) = self.object.take() {
                // Out of the pool for good; dropping the client closes it.
                drop(Object::take(object));
            }
        }
    }
}
