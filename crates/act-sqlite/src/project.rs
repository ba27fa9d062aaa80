//! Transactional projections: a handler's writes to its own tables and the
//! acknowledgement of its events commit in one transaction of this store's
//! database file, fenced by the handler's lease.

use std::sync::{Arc, Mutex};

use act::{BoxError, Context, Event, HandlerError, Rejection};

use crate::error::Failure;
use crate::SqliteStore;

/// Why the transaction did not commit, carried out of the writer thread.
enum Failed {
    Apply(BoxError),
    Fence(Rejection),
}

impl SqliteStore {
    /// Runs `apply` in a transaction of this store's database (your tables
    /// live in the same file) and, in the same transaction, acknowledges
    /// `events` (the handler's event, or a batch handler's window) in the
    /// handler's queue. Both commit together or not at all, so each event is
    /// applied exactly once to your tables: a crash before the commit
    /// leaves neither (the events are delivered again), after it both.
    ///
    /// Fencing: the acknowledgement checks the handler's lease as a
    /// settlement does (token, live on the store's clock, position), inside
    /// the transaction that holds SQLite's write lock, so a broker that lost
    /// its lease gets an error and its writes are rolled back.
    ///
    /// `apply` runs on the store's writer thread, like every write: keep it
    /// short (it holds the write lock) and synchronous. It may run more
    /// than once (after a rollback, while another process held the
    /// database's write lock), so it must only write through the
    /// transaction it is given.
    /// Call `project` once per handler call, with the call's events. Durable
    /// as the store's queue writes are (`queue_sync`). Write only to your
    /// own tables, not to act's.
    ///
    /// ```no_run
    /// # async fn demo(store: std::sync::Arc<act_sqlite::SqliteStore>) {
    /// use act::Reaction;
    /// let s = store.clone();
    /// let totals = Reaction::on("Deposited")
    ///     .to_stream("totals")
    ///     .handle_batch(move |events, ctx| {
    ///         let s = s.clone();
    ///         async move {
    ///             let rows: Vec<i64> =
    ///                 events.iter().map(|e| e.data["amount"].as_i64().unwrap_or(0)).collect();
    ///             s.project(&ctx, &events, move |tx| {
    ///                 let mut up = tx.prepare_cached(
    ///                     "INSERT INTO totals (id, amount) VALUES (1, ?1)
    ///                      ON CONFLICT (id) DO UPDATE SET amount = amount + ?1",
    ///                 )?;
    ///                 for amount in &rows {
    ///                     up.execute([amount])?;
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
        F: Fn(&rusqlite::Transaction) -> Result<(), BoxError> + Send + 'static,
    {
        let writer = self.writer("apply a projection")?;
        let Some(through) = events.iter().map(|e| e.id).max() else {
            return Ok(());
        };
        let fenced = ctx.fenced();
        let now = self.now();
        let why: Arc<Mutex<Option<Failed>>> = Arc::default();
        let seen = why.clone();
        let done = writer
            .write(self.queue_sync, move |tx| {
                let fail = |f: Failed| {
                    *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                    // An error rolls the transaction back.
                    Err(Failure::Act(act::Error::InvalidInput(
                        "the projection did not commit".into(),
                    )))
                };
                // The lane's transaction holds the write lock (BEGIN
                // IMMEDIATE): `apply` cannot meet a busy database.
                if let Err(e) = apply(tx) {
                    return fail(Failed::Apply(e));
                }
                match crate::queues::ack_within(tx, &fenced, through, now)? {
                    Ok(()) => Ok(()),
                    Err(r) => fail(Failed::Fence(r)),
                }
            })
            .await;
        let failed = why.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (done, failed) {
            (Ok(()), _) => {
                ctx.acknowledged(through);
                Ok(())
            }
            (Err(_), Some(Failed::Apply(e))) => Err(HandlerError::transient(e)),
            (Err(_), Some(Failed::Fence(r))) => Err(HandlerError::transient(format!(
                "the projection's writes were rolled back: {r}"
            ))),
            (Err(e), None) => Err(e.into()),
        }
    }
}
