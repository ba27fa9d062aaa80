//! A transactional projection: a `balances` table in the act store's own
//! SQLite file, written by a batch handler through `SqliteStore::project`,
//! so each window of events and the acknowledgement of those events commit
//! in one transaction. No checkpoint table of your own: an event is in the
//! table exactly once, whatever crashes, because a crash before the commit
//! leaves neither the rows nor the acknowledgement, and one after it leaves
//! both (compare `read-model`, which keeps its own last-event id because its
//! table lives in another database).
//!
//! Rebuilding: truncate the table (your step), then `reset` the queue to 0
//! (what `act reset balances --to 0` does): the next broker replays the log.
//!
//! Run it: `cargo run -p act-examples --bin projection`

use std::error::Error;
use std::sync::Arc;

use act::{Act, Append, BrokerOptions, Message, Reaction};
use act_sqlite::SqliteStore;
use serde_json::json;

fn balances(store: Arc<SqliteStore>) -> Reaction {
    Reaction::on("Deposited")
        .also("Withdrawn")
        .named("balances")
        .to_stream("balances")
        .from_beginning()
        .handle_batch(move |events, ctx| {
            let store = store.clone();
            async move {
                // (account, signed amount) per event of the window.
                let rows: Vec<(String, i64)> = events
                    .iter()
                    .map(|e| {
                        let amount = e.data["amount"].as_i64().unwrap_or(0);
                        let signed = if e.name == "Withdrawn" {
                            -amount
                        } else {
                            amount
                        };
                        (e.stream.clone(), signed)
                    })
                    .collect();
                store
                    .project(&ctx, &events, move |tx| {
                        let mut add = tx.prepare_cached(
                            "INSERT INTO balances (account, balance) VALUES (?1, ?2)
                             ON CONFLICT (account) DO UPDATE SET balance = balance + ?2",
                        )?;
                        for (account, amount) in &rows {
                            add.execute(rusqlite::params![account, amount])?;
                        }
                        Ok(())
                    })
                    .await
            }
        })
}

fn table(path: &std::path::Path) -> rusqlite::Result<Vec<(String, i64)>> {
    let c = rusqlite::Connection::open(path)?;
    let mut q = c.prepare("SELECT account, balance FROM balances ORDER BY account")?;
    let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn check(ok: bool, what: String) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("act.db");
    let store = Arc::new(SqliteStore::open(&path).await?);
    // Your table, in the store's file.
    rusqlite::Connection::open(&path)?.execute_batch(
        "CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL)",
    )?;
    let app = Act::builder(store.clone())
        .reaction(balances(store.clone()))
        .build()?;

    let mut events = 0;
    for (account, name, amount) in [
        ("account-1", "Deposited", 100),
        ("account-2", "Deposited", 50),
        ("account-1", "Withdrawn", 30),
        ("account-2", "Deposited", 25),
        ("account-1", "Deposited", 5),
    ] {
        let msg = Message::new(name, json!({ "amount": amount }));
        app.store().append(Append::new(account, vec![msg])).await?;
        events += 1;
    }
    let expected = vec![("account-1".to_string(), 75), ("account-2".to_string(), 75)];

    // Build: one window, one transaction with its acknowledgement.
    let built = app.broker(BrokerOptions::default()).settle().await?;
    check(
        table(&path)? == expected,
        format!("balances {:?}", table(&path)?),
    )?;
    let filter = act::QueueFilter {
        stream: Some("balances".into()),
        ..Default::default()
    };
    let q = app.store().queues(&filter).await?;
    check(
        q.len() == 1 && q[0].lag == 0 && q[0].retries == 0,
        format!("the queue after the build: {q:?}"),
    )?;

    // Rebuild: truncate your table, reset the queue to the beginning.
    rusqlite::Connection::open(&path)?.execute_batch("DELETE FROM balances")?;
    app.store().reset("balances", 0).await?;
    let replay = app.broker(BrokerOptions::default()).settle().await?;
    check(
        replay.events == events,
        format!("replayed {} events, expected {events}", replay.events),
    )?;
    check(
        table(&path)? == expected,
        format!("balances after the rebuild {:?}", table(&path)?),
    )?;
    println!(
        "ok: 2 balances from {events} events in {} window(s), rebuilt identical",
        built.claims
    );
    Ok(())
}
