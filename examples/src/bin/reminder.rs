//! A durable timer: remind a customer of an unpaid order some time after it
//! was placed, unless it was paid first.
//!
//! One reaction, `reminders`, handles `OrderPlaced` (schedule the timer
//! `reminder-{order}`) and `OrderPaid` (cancel it). Both events go to one
//! queue per order, so the cancel is always handled after the schedule:
//! queues of different orders run in parallel, but one queue is in order.
//! When the time comes, a broker appends the timer's `ReminderDue` to the
//! stream `act.timer.reminder-{order}`, once, and the `send-reminder`
//! reaction handles it like any event. The timer is rows in the store, not
//! a task: a worker that restarts, or another worker, fires it.
//!
//! Here "24 hours" is one second, the store is SQLite in a temporary
//! directory, and the program checks its own outcome.
//!
//! Run it: `cargo run -p act-examples --bin reminder`

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use act::timer::{Timer, TimerStatus};
use act::{Act, Append, BrokerOptions, Message, Reaction};
use act_sqlite::SqliteStore;
use serde_json::json;

/// How long after an order its reminder is due ("24 hours").
const REMIND_AFTER: Duration = Duration::from_secs(1);

fn app(store: Arc<SqliteStore>, sent: Arc<Mutex<Vec<String>>>) -> act::Result<Act> {
    let reminders = Reaction::on("OrderPlaced")
        .also("OrderPaid")
        .named("reminders")
        .to(|e| Some(format!("reminders-{}", e.stream)))
        .from_beginning()
        .handle(|event, ctx| async move {
            let key = format!("reminder-{}", event.stream);
            if event.name == "OrderPlaced" {
                let due = Message::new("ReminderDue", json!({ "order": event.stream }));
                ctx.schedule(Timer::after(key, REMIND_AFTER, due)).await?;
            } else {
                ctx.cancel_timer(&key).await?;
            }
            Ok(())
        });
    let send = Reaction::on("ReminderDue")
        .named("send-reminder")
        .to_stream("outbox")
        .from_beginning()
        .handle(move |event, _ctx| {
            let sent = sent.clone();
            async move {
                let order = event.data["order"].as_str().unwrap_or_default().to_string();
                println!("reminder: order {order} is still unpaid");
                sent.lock().unwrap_or_else(|p| p.into_inner()).push(order);
                Ok(())
            }
        });
    Act::builder(store)
        .timers()
        .reaction(reminders)
        .reaction(send)
        .build()
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
    let sent = Arc::new(Mutex::new(Vec::new()));
    let app = app(store.clone(), sent.clone())?;
    let worker = app.broker(BrokerOptions::default()).start();

    let placed = |order: &str| Append::new(order, vec![Message::new("OrderPlaced", json!({}))]);
    store_append(&app, placed("order-1")).await?;
    store_append(&app, placed("order-2")).await?;
    // order-2 is paid at once: its reminder is cancelled before it is due.
    store_append(
        &app,
        Append::new("order-2", vec![Message::new("OrderPaid", json!({}))]),
    )
    .await?;

    let started = Instant::now();
    while sent.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = started.elapsed();
    // Give a wrong second reminder, or order-2's, time to show up.
    tokio::time::sleep(REMIND_AFTER * 2).await;
    worker.shutdown().await?;

    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    check(
        sent == vec!["order-1".to_string()],
        format!("reminders sent: {sent:?}"),
    )?;
    check(
        waited >= REMIND_AFTER - Duration::from_millis(100),
        format!("the reminder came after {waited:?}, before its time"),
    )?;
    let one = app.timer("reminder-order-1").await?;
    let two = app.timer("reminder-order-2").await?;
    check(
        matches!(one, TimerStatus::Fired { .. }),
        format!("order-1's timer: {one:?}"),
    )?;
    check(
        matches!(two, TimerStatus::Cancelled { .. }),
        format!("order-2's timer: {two:?}"),
    )?;
    println!(
        "ok: order-1 reminded once after {:.1} s; order-2 was paid and its reminder cancelled",
        waited.as_secs_f64()
    );
    Ok(())
}

async fn store_append(app: &Act, append: Append) -> act::Result<()> {
    app.store().append(append).await.map(|_| ())
}
