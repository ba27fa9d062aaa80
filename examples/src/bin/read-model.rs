//! A projection into a read model of your own: a `products` table in a
//! separate SQLite database, fed by a reaction on the act store's events, then
//! rebuilt from the log.
//!
//! The handler is idempotent per event: the read model keeps the id of the
//! last event it applied, and each event updates the table and that id in
//! one SQLite transaction, skipping events at or below it. Delivery is
//! at-least-once (a crash after the commit but before the ack delivers the
//! event again). Without that id a redelivered `Listed` would hit the primary
//! key and block the queue, and a read model that counts would count twice.
//! Because the id moves in the same transaction as the rows, the table and
//! "where it is" can never disagree.
//!
//! Rebuilding: empty the table and its last id (your truncate step), then
//! `reset` the reaction's queue to 0 (what `act reset catalog --to 0` does):
//! the next broker replays the whole log into it. Do both while no broker runs
//! this reaction, truncate first, so no event lands between the two steps.
//!
//! Run it: `cargo run -p act-examples --bin read-model`

use std::error::Error;
use std::sync::{Arc, Mutex};

use act::{Act, Action, Actor, BrokerOptions, Event, Invariant, State};
use act_sqlite::SqliteStore;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Product {
    listed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum ProductEvent {
    Listed { title: String, price: i64 },
    Repriced { price: i64 },
}

enum ProductAction {
    List { title: String, price: i64 },
    Reprice { price: i64 },
}

impl Action for ProductAction {
    fn name(&self) -> &str {
        match self {
            ProductAction::List { .. } => "list",
            ProductAction::Reprice { .. } => "reprice",
        }
    }
}

impl State for Product {
    type Event = ProductEvent;
    type Action = ProductAction;

    fn apply(&mut self, event: &ProductEvent) {
        if let ProductEvent::Listed { .. } = event {
            self.listed = true;
        }
    }

    fn decide(&self, action: &ProductAction) -> Result<Vec<ProductEvent>, Invariant> {
        match action {
            ProductAction::List { .. } if self.listed => Err(Invariant::new("already listed")),
            ProductAction::List { title, price } => Ok(vec![ProductEvent::Listed {
                title: title.clone(),
                price: *price,
            }]),
            ProductAction::Reprice { .. } if !self.listed => Err(Invariant::new("not listed")),
            ProductAction::Reprice { price } => Ok(vec![ProductEvent::Repriced { price: *price }]),
        }
    }
}

type ReadModel = Arc<Mutex<Connection>>;

/// Applies one event to the read model, once: rows and last id in one transaction.
fn project(db: &ReadModel, event: &Event, change: ProductEvent) -> rusqlite::Result<()> {
    let mut conn = db.lock().expect("the read model's lock");
    let tx = conn.transaction()?;
    let last: i64 = tx.query_row("SELECT last_event FROM checkpoint", [], |r| r.get(0))?;
    if event.id <= last {
        return Ok(()); // applied before: a redelivery or a replay without a truncate
    }
    let sku = event.stream.trim_start_matches("product-");
    match change {
        ProductEvent::Listed { title, price } => tx.execute(
            "INSERT INTO products (sku, title, price) VALUES (?1, ?2, ?3)",
            params![sku, title, price],
        )?,
        ProductEvent::Repriced { price } => tx.execute(
            "UPDATE products SET price = ?2 WHERE sku = ?1",
            params![sku, price],
        )?,
    };
    tx.execute("UPDATE checkpoint SET last_event = ?1", [event.id])?;
    tx.commit()
}

fn open_read_model(path: &std::path::Path) -> rusqlite::Result<ReadModel> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, title TEXT NOT NULL, price INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS checkpoint (last_event INTEGER NOT NULL);
         INSERT INTO checkpoint SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM checkpoint);",
    )?;
    Ok(Arc::new(Mutex::new(conn)))
}

/// The user's own truncate step of a rebuild.
fn truncate(db: &ReadModel) -> rusqlite::Result<()> {
    let conn = db.lock().expect("the read model's lock");
    conn.execute_batch("BEGIN; DELETE FROM products; UPDATE checkpoint SET last_event = 0; COMMIT;")
}

fn rows(db: &ReadModel) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let conn = db.lock().expect("the read model's lock");
    let mut q = conn.prepare("SELECT sku, title, price FROM products ORDER BY sku")?;
    let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

fn price(db: &ReadModel, sku: &str) -> rusqlite::Result<Option<i64>> {
    let conn = db.lock().expect("the read model's lock");
    conn.query_row("SELECT price FROM products WHERE sku = ?1", [sku], |r| {
        r.get(0)
    })
    .optional()
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
    let store = Arc::new(SqliteStore::open(dir.path().join("act.db")).await?);
    let db = open_read_model(&dir.path().join("read.db"))?;

    let handler_db = db.clone();
    // Typed: the handler gets the decoded event; one that does not decode
    // blocks the queue with the error (retrying cannot fix it).
    let catalog = act::on!(ProductEvent { Listed, Repriced })
        .named("catalog")
        .to_stream("catalog")
        .from_beginning() // a projection: the whole history
        .handle(move |change, event, _ctx| {
            let db = handler_db.clone();
            async move {
                // rusqlite blocks: run it on tokio's blocking pool, not the runtime.
                tokio::task::spawn_blocking(move || project(&db, &event, change)).await??;
                Ok(())
            }
        });
    let app = Act::builder(store).reaction(catalog).build()?;

    let me = Actor::system("read-model-example");
    for (sku, title, price) in [
        ("a1", "anvil", 120),
        ("b2", "bucket", 15),
        ("c3", "crate", 40),
    ] {
        let list = ProductAction::List {
            title: title.into(),
            price,
        };
        app.act::<Product>(&format!("product-{sku}"), &list, &me)
            .await?;
    }
    app.act::<Product>("product-b2", &ProductAction::Reprice { price: 12 }, &me)
        .await?;
    let events = 4;

    // Build.
    app.broker(BrokerOptions::default()).settle().await?;
    let built = rows(&db)?;
    check(
        built.len() == 3,
        format!("3 products expected, got {built:?}"),
    )?;
    check(price(&db, "b2")? == Some(12), "b2 should cost 12".into())?;

    // Rebuild: truncate, reset the queue to the beginning, deliver the replay.
    truncate(&db)?;
    app.store().reset("catalog", 0).await?;
    let replay = app.broker(BrokerOptions::default()).settle().await?;
    let rebuilt = rows(&db)?;
    check(
        replay.reactions == events,
        format!("replayed {} events, expected {events}", replay.reactions),
    )?;
    check(
        rebuilt == built,
        format!("rebuilt {rebuilt:?} differs from {built:?}"),
    )?;

    // Idempotent: a replay without the truncate changes nothing.
    app.store().reset("catalog", 0).await?;
    app.broker(BrokerOptions::default()).settle().await?;
    check(
        rows(&db)? == built,
        "a second replay changed the read model".into(),
    )?;

    println!(
        "ok: {} products, rebuilt from {events} events identical, a replay without truncate changed nothing",
        rebuilt.len()
    );
    Ok(())
}
