//! What the store's functions read does not depend on how PostgreSQL
//! happens to plan them.
//!
//! A claim hands out the first events of a queue's window. PostgreSQL plans
//! the statement that cuts the window for each of a session's first five
//! calls with the values given (a custom plan). When the table's statistics
//! say queues are short and one queue is long (a reaction added to a long
//! log, a projection's one queue), such a plan read every pending item of
//! the long queue and sorted them to find the first hundred: 20,000 items
//! per claim here, a million after a backfill of a million events. The test
//! makes those statistics, then reads the plans of the first claims of a
//! new session (auto_explain, whose reports reach the client as LOG
//! messages) and counts the rows each plan read from `items`.

mod common;

use std::sync::{Arc, Mutex};

use act::{Append, Correlation, EventStore, Message, QueueStore, Subscription, Work};
use common::{fresh_schema, open, options, server, DropSchema};
use futures_util::StreamExt;
use serde_json::json;
use tokio_postgres::AsyncMessage;

/// Pending items of the long queue.
const BACKLOG: usize = 20_000;
/// Events a claim asks for.
const WINDOW: i32 = 100;

/// A connection whose server messages (notices, LOG lines) are kept.
async fn listening(url: &str) -> (tokio_postgres::Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = kept.clone();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notice(n) = m {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(n.message().to_string());
            }
        }
    });
    (client, kept)
}

/// The largest `actual rows=` of a plan node that reads `items`.
fn rows_read_from_items(plan: &str) -> Option<u64> {
    plan.lines()
        .filter(|l| l.contains(" on items"))
        .filter_map(|l| {
            let at = l.find("actual rows=")? + "actual rows=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
}

/// A store whose `items` statistics describe 2,000 short queues, then a
/// queue `long` with [`BACKLOG`] pending events of reaction `r` (news
/// folded), and a connection that keeps the server's messages.
struct Long {
    store: act_pg::PgStore,
    schema: String,
    c: tokio_postgres::Client,
    logged: Arc<Mutex<Vec<String>>>,
    _drop: DropSchema,
}

async fn long_queue(tag: &str) -> Long {
    let schema = fresh_schema(tag);
    let offset = Arc::default();
    let drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::clone(&offset),
    };
    let store = open(options(&schema, &offset)).await;
    let (c, logged) = listening(&server()).await;
    // Statistics of many short queues, gathered before the long one was
    // enqueued, and kept (no autovacuum of this test's table: deleted
    // items stay in the index too).
    c.batch_execute(&format!(
        "ALTER TABLE {schema}.items SET (autovacuum_enabled = false);
         INSERT INTO {schema}.items (stream, event, reaction, seq)
             SELECT 'short-' || (g % 2000), g, 'other', g FROM generate_series(1, 11800) g;
         ANALYZE {schema}.items;"
    ))
    .await
    .unwrap();
    store
        .subscribe(&[Subscription {
            name: "r".into(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        }])
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(BACKLOG);
    for _ in 0..BACKLOG / 1000 {
        let page = (0..1000).map(|i| Message::new("Ping", json!({ "i": i })));
        let got = store
            .append(Append::new("a", page.collect()))
            .await
            .unwrap();
        ids.extend(got.iter().map(|e| e.id));
    }
    let last = *ids.last().expect("events appended");
    store
        .enqueue(&Correlation {
            reactions: vec!["r".into()],
            replay: None,
            from: 0,
            to: last,
            work: ids
                .iter()
                .map(|&event| Work {
                    stream: "long".into(),
                    event,
                    reaction: "r".into(),
                    priority: 0,
                })
                .collect(),
        })
        .await
        .unwrap();
    c.batch_execute(&format!("SELECT {schema}.act_fold_news()"))
        .await
        .unwrap();
    Long {
        store,
        schema,
        c,
        logged,
        _drop: drop,
    }
}

/// Sends auto_explain's plans (with what they read) to the client.
async fn explain(c: &tokio_postgres::Client) {
    c.batch_execute(
        "SET client_min_messages = log;
         LOAD 'auto_explain';
         SET auto_explain.log_min_duration = 0;
         SET auto_explain.log_analyze = on;
         SET auto_explain.log_buffers = on;
         SET auto_explain.log_timing = off;
         SET auto_explain.log_nested_statements = on;",
    )
    .await
    .expect("auto_explain (a contrib module, loaded by a superuser)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_reads_its_window_not_the_backlog_whatever_the_statistics_say() {
    let Long {
        store,
        schema,
        c,
        logged,
        _drop,
    } = long_queue("plans").await;
    explain(&c).await;
    // More than the five custom plans a session makes before it may keep
    // a generic one; each claim is rolled back, so each finds the queue.
    let claim = format!(
        "SELECT count(*) FROM {schema}.act_claim('o', 1, $1, 60000000, ARRAY['r'], 'a', 'b', 0)"
    );
    for n in 1..=7 {
        logged.lock().unwrap_or_else(|e| e.into_inner()).clear();
        c.batch_execute("BEGIN").await.unwrap();
        let got: i64 = c.query_one(&claim, &[&WINDOW]).await.unwrap().get(0);
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(got, i64::from(WINDOW), "claim {n} hands out a window");
        let plans = logged.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let read: Vec<u64> = plans
            .iter()
            .filter_map(|p| rows_read_from_items(p))
            .collect();
        assert!(
            !read.is_empty(),
            "claim {n}: auto_explain reported no plan that reads items: {plans:?}"
        );
        let most = read.iter().copied().max().unwrap_or(0);
        assert!(
            most <= 10 * WINDOW as u64,
            "claim {n} read {most} rows of items for a window of {WINDOW} events \
             (backlog {BACKLOG}); rows read per plan: {read:?}"
        );
    }
    drop(store);
}

/// The buffers each scan of `items` in a plan read (its `Buffers: shared
/// hit=… read=…` line), not counting what the plan then wrote.
fn scans_of_items(plan: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut in_scan = false;
    for l in plan.lines() {
        if l.contains("->")
            || l.trim_start().starts_with("Delete")
            || l.trim_start().starts_with("Update")
        {
            in_scan = l.contains("Scan") && l.contains(" on items");
        } else if in_scan && l.trim_start().starts_with("Buffers:") {
            let read = ["hit=", "read="]
                .iter()
                .filter_map(|k| {
                    let at = l.find(k)? + k.len();
                    let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u64>().ok()
                })
                .sum();
            out.push(read);
            in_scan = false;
        }
    }
    out
}

/// Delivers half of [`long_queue`]'s backlog, [`WINDOW`] events at a time,
/// each claim and acknowledgement in a transaction of its own as a broker
/// does (the deleted items stay in the index: no vacuum), acknowledging
/// with `ack` (parameters: token, from, mark, last event; it returns the
/// fence code) and, when `settled_after`, then settling as the broker does
/// after a handler acknowledged on its own; then reads the plans of one
/// more `ack` and checks that no scan of `items` in it walked the
/// delivered half.
async fn acknowledgements_read_past_delivered_items(
    tag: &str,
    what: &str,
    ack: fn(&str) -> String,
    settled_after: bool,
) {
    let Long {
        store,
        schema,
        c,
        logged,
        _drop,
    } = long_queue(tag).await;
    let claim = format!(
        "SELECT l_token, l_position, l_mark, max(e_id) FROM {schema}.act_claim('o', 1, $1, 60000000, ARRAY['r'], 'a', 'b', 0) \
         GROUP BY 1, 2, 3"
    );
    let ack = ack(&schema);
    let settle = settle(&schema);
    let fold = format!("SELECT {schema}.act_fold_news()");
    let round = |explained: bool| {
        let (c, claim, ack, settle, fold, logged) = (&c, &claim, &ack, &settle, &fold, &logged);
        async move {
            c.batch_execute(fold).await.unwrap();
            let row = c.query_one(claim, &[&WINDOW]).await.unwrap();
            let (token, from, mark, last): (i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if explained {
                logged.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            let code: i32 = c
                .query_one(ack, &[&token, &from, &mark, &last])
                .await
                .unwrap()
                .get(0);
            assert_eq!(code, 0, "the {what} is accepted");
            let plans = logged.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if settled_after {
                // The acknowledgement moved the queue's position: the
                // broker's settle is fenced from there.
                let code: i32 = c
                    .query_one(settle, &[&token, &last, &mark, &last])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(code, 0, "the settle after the {what} is accepted");
            }
            plans
        }
    };
    for _ in 0..BACKLOG / 2 / WINDOW as usize {
        round(false).await;
    }
    explain(&c).await;
    let plans = round(true).await;
    let scans: Vec<(Vec<u64>, &String)> = plans
        .iter()
        .map(|p| (scans_of_items(p), p))
        .filter(|(s, _)| !s.is_empty())
        .collect();
    assert!(
        scans.len() >= 2,
        "auto_explain reported the {what}'s delete and its next event: {plans:?}"
    );
    for (read, plan) in &scans {
        assert!(
            read.iter().all(|&r| r <= 20),
            "a scan of items in the {what} read {read:?} buffers after {} items were \
             delivered before it:\n{plan}",
            BACKLOG / 2
        );
    }
    // The queue's next event is the first one not delivered.
    let row = c
        .query_one(
            &format!(
                "SELECT q.next, (SELECT min(i.event) FROM {schema}.items i WHERE i.stream = 'long') \
                 FROM {schema}.queues q WHERE q.stream = 'long'"
            ),
            &[],
        )
        .await
        .unwrap();
    let (next, first_left): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    assert!(next.is_some(), "half the backlog is still pending");
    assert_eq!(
        next, first_left,
        "the {what} set the queue's next event to its first item left"
    );
    drop(store);
}

/// A settle of the long queue that acknowledges its window (parameters:
/// token, from, mark, last event).
fn settle(schema: &str) -> String {
    format!(
        "SELECT code FROM {schema}.act_settle(ARRAY['long'], ARRAY[$1::bigint], ARRAY[$2::bigint], \
         ARRAY[$3::bigint], ARRAY[$4::bigint], ARRAY[0::smallint], ARRAY[0::bigint], ARRAY[NULL::text], 0)"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_reads_past_the_items_delivered_before_it() {
    acknowledgements_read_past_delivered_items("settles", "settle", settle, false).await;
}

/// The acknowledgement a transactional projection makes in its own
/// transaction, window after window of one long queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_within_a_transaction_reads_past_the_items_delivered_before_it() {
    acknowledgements_read_past_delivered_items(
        "acks_within",
        "acknowledgement",
        |schema| format!("SELECT code FROM {schema}.act_ack_within('long', $1, $2, $3, $4, 0)"),
        true,
    )
    .await;
}

#[test]
fn plan_lines_are_read() {
    let plan = "Limit (actual rows=100 loops=1)\n  ->  Bitmap Heap Scan on items i (actual rows=20000 loops=1)\n  ->  Index Scan using events_pkey on events e (actual rows=1 loops=100)";
    assert_eq!(rows_read_from_items(plan), Some(20_000));
    assert_eq!(
        rows_read_from_items("Seq Scan on queues (actual rows=3 loops=1)"),
        None
    );
}
