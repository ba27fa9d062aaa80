//! `--entries`: the bank demo's transactional projection. Every deposit and
//! withdrawal becomes one row of `act_bank_entries` (event id, account,
//! amount) in the store's own database, written in one transaction with the
//! acknowledgement of its events (`project`), so each event is in the table
//! exactly once whatever crashes. SQLite and PostgreSQL only.

use std::sync::Arc;

use act::{Event, HandlerError, Reaction, Store};

/// The table the projection writes (in the store's schema on PostgreSQL).
pub const TABLE: &str = "act_bank_entries";

/// The `entries` reaction: a batch per account queue, blocking after
/// `max_retries` failed attempts (the bank's `--max-retries`, default 3).
pub fn reaction(store: Arc<dyn Store>, max_retries: Option<u32>) -> act::Result<Reaction> {
    let supported = store
        .as_any()
        .is_some_and(|a| a.is::<act_sqlite::SqliteStore>() || a.is::<act_pg::PgStore>());
    if !supported {
        return Err(act::Error::InvalidInput(
            "--entries needs a SQLite or PostgreSQL store: transactional projections write to the store's own database".into(),
        ));
    }
    Ok(Reaction::on("Deposited")
        .also("Withdrawn")
        .named("entries")
        .max_retries(max_retries.unwrap_or(act_bank::reactions::MAX_RETRIES))
        .to(|e| Some(format!("entries-{}", e.stream)))
        .from_beginning()
        .handle_batch(move |events, ctx| {
            let store = store.clone();
            async move { project(&*store, &ctx, events).await }
        }))
}

fn row(e: &Event) -> (i64, String, i64) {
    let amount = e.data["amount"].as_i64().unwrap_or(0);
    let signed = if e.name == "Withdrawn" {
        -amount
    } else {
        amount
    };
    (e.id, e.stream.clone(), signed)
}

async fn project(
    store: &dyn Store,
    ctx: &act::Context,
    events: Vec<Arc<Event>>,
) -> Result<(), HandlerError> {
    let rows: Vec<(i64, String, i64)> = events.iter().map(|e| row(e)).collect();
    let any = store.as_any();
    if let Some(s) = any.and_then(|a| a.downcast_ref::<act_sqlite::SqliteStore>()) {
        return s
            .project(ctx, &events, move |tx| {
                tx.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (event INTEGER NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL)"
                ))?;
                let mut insert = tx.prepare_cached(&format!(
                    "INSERT INTO {TABLE} (event, account, amount) VALUES (?1, ?2, ?3)"
                ))?;
                for (id, account, amount) in &rows {
                    insert.execute(rusqlite::params![id, account, amount])?;
                }
                Ok(())
            })
            .await;
    }
    if let Some(s) = any.and_then(|a| a.downcast_ref::<act_pg::PgStore>()) {
        let table = format!("{}.{TABLE}", s.schema());
        return s
            .project(ctx, &events, async |tx| {
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (event bigint NOT NULL, account text NOT NULL, amount bigint NOT NULL)"
                ))
                .await?;
                let insert = tx
                    .prepare(&format!(
                        "INSERT INTO {table} (event, account, amount) VALUES ($1, $2, $3)"
                    ))
                    .await?;
                for (id, account, amount) in &rows {
                    tx.execute(&insert, &[id, account, amount]).await?;
                }
                Ok(())
            })
            .await;
    }
    Err(HandlerError::permanent(
        "--entries needs a SQLite or PostgreSQL store",
    ))
}
