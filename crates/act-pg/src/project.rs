//! Transactional projections: a handler's writes to its own tables and the
//! acknowledgement of its events commit in one transaction of this store's
//! database, fenced by the handler's lease.

use std::sync::Arc;

use act::{BoxError, Context, Event, HandlerError};

use crate::PgStore;

/// Why a projection's transaction did not commit.
enum Failed {
    /// The caller's writes failed.
    Apply(BoxError),
    /// The lease no longer holds the queue.
    Fence(act::Rejection),
    /// The database.
    Db(tokio_postgres::Error),
}

impl PgStore {
    /// Runs `apply` in a transaction of this store's database and, in the
    /// same transaction, acknowledges `events` (the handler's event, or a
    /// batch handler's window) in the handler's queue. Both commit together
    /// or not at all: a crash before the commit leaves neither (the events
    /// are delivered again), a crash after it leaves both (the events are
    /// never delivered again), so each event is applied exactly once to
    /// your tables, with no table of your own to deduplicate.
    ///
    /// Fencing: the acknowledgement checks the handler's lease as a
    /// settlement does (its token, that it is live on the store's clock,
    /// the position) and locks the queue's row until the commit. A broker
    /// that lost its lease (a pause past its expiry, a partition) gets an
    /// error and its writes are rolled back, so a stale broker can never
    /// apply a batch twice.
    ///
    /// Call it from the reaction's handler with that handler's context,
    /// once per call, with the events of the call (the broker's own
    /// settlement then expects the position this moved the queue to). Keep
    /// the transaction short: it holds the queue's row lock. Write only to
    /// tables (in any schema of the database), not to act's own.
    ///
    /// Costs the transaction's own statements plus one round trip (the
    /// acknowledgement) and the commit.
    ///
    /// ```no_run
    /// # async fn demo(store: std::sync::Arc<act_pg::PgStore>) {
    /// use act::Reaction;
    /// let s = store.clone();
    /// let totals = Reaction::on("Deposited")
    ///     .to_stream("totals")
    ///     .handle_batch(move |events, ctx| {
    ///         let s = s.clone();
    ///         async move {
    ///             s.project(&ctx, &events, async |tx| {
    ///                 for e in &events {
    ///                     let amount = e.data["amount"].as_i64().unwrap_or(0);
    ///                     tx.execute(
    ///                         "INSERT INTO totals (id, amount) VALUES (1, $1)
    ///                          ON CONFLICT (id) DO UPDATE SET amount = totals.amount + $1",
    ///                         &[&amount],
    ///                     )
    ///                     .await?;
    ///                 }
    ///                 Ok(())
    ///             })
    ///             .await
    ///         }
    ///     });
    /// # let _ = totals;
    /// # }
    /// ```
    pub async fn project<F>(
        &self,
        ctx: &Context,
        events: &[Arc<Event>],
        apply: F,
    ) -> Result<(), HandlerError>
    where
        F: AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<(), BoxError>,
    {
        self.writable()?;
        let Some(through) = events.iter().map(|e| e.id).max() else {
            return Ok(());
        };
        let fenced = ctx.fenced();
        let mut conn = self.conn().await?;
        let result = async {
            let tx = conn.object_mut().transaction().await.map_err(Failed::Db)?;
            apply(&tx).await.map_err(Failed::Apply)?;
            let sql = format!(
                "SELECT code, current FROM {}.act_ack_within($1, $2, $3, $4, $5, $6)",
                self.schema
            );
            let offset = self.offset_us();
            let row = tx
                .query_one(
                    &sql,
                    &[
                        &fenced.lease.stream,
                        &fenced.lease.token,
                        &fenced.from,
                        &fenced.mark,
                        &through,
                        &offset,
                    ],
                )
                .await
                .map_err(Failed::Db)?;
            crate::queues::rejection(
                &fenced.lease.stream,
                fenced.lease.token,
                row.get(0),
                row.get(1),
                fenced.from,
            )
            .map_err(Failed::Fence)?;
            // Dropping the transaction on any error above rolled it back.
            tx.commit().await.map_err(Failed::Db)
        }
        .await;
        // A driver error may leave the connection unfit for the pool.
        if matches!(&result, Err(Failed::Db(e)) if crate::error::discards(e)) {
            conn.discard();
        }
        match result {
            Ok(()) => {}
            Err(Failed::Apply(e)) => return Err(HandlerError::transient(e)),
            Err(Failed::Fence(rejection)) => {
                return Err(HandlerError::transient(format!(
                    "the projection's writes were rolled back: {rejection}"
                )))
            }
            Err(Failed::Db(e)) => return Err(self.err(e).into()),
        }
        ctx.acknowledged(through);
        Ok(())
    }
}
