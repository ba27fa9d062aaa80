//! Schema migration 2 carries a version 1 store forward: its correlation
//! checkpoint stays readable, its pending work becomes items without a
//! reaction (claimable, delivered as version 1 did), acknowledged work is
//! dropped; a read-only open asks for the upgrade instead of doing it; a
//! store newer than the code is refused.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::{
    Append, Claim, Correlation, Error, EventStore, Message, OpenMode, QueueFilter, QueueStore,
    Settlement, Work,
};
use act_pg::PgStore;
use common::{fresh_schema, raw, server, with_params, DropSchema};
use serde_json::json;

/// Builds a version 1 store by hand: three events, queue `q1` acknowledged
/// up to the first with the other two pending, queue `q2` with the second
/// pending, and the one checkpoint at the third. Returns the event ids.
async fn v1_store(schema: &str) -> Vec<i64> {
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::v1_store_sql(schema))
        .await
        .expect("the version 1 schema");
    let mut ids = Vec::new();
    for stream in ["a", "a", "b"] {
        let row = c
            .query_one(
                &format!(
                    "SELECT id FROM {schema}.act_append($1, NULL, ARRAY['Ping'], ARRAY['{{}}'::jsonb], 'c', NULL, NULL, NULL, 0, false, 0)"
                ),
                &[&stream],
            )
            .await
            .expect("a version 1 append");
        ids.push(row.get::<_, i64>(0));
    }
    let (e1, e2, e3) = (ids[0], ids[1], ids[2]);
    c.execute(
        &format!(
            "INSERT INTO {schema}.queues (stream, position, head, next, priority, retries, error, token)
             VALUES ('q1', $1, $3, $2, 3, 2, 'boom', 7), ('q2', 0, $2, $2, 0, 0, NULL, 1)"
        ),
        &[&e1, &e2, &e3],
    )
    .await
    .expect("version 1 queues");
    c.execute(
        &format!("INSERT INTO {schema}.work (stream, event) VALUES ('q1', $1), ('q1', $2), ('q1', $3), ('q2', $2)"),
        &[&e1, &e2, &e3],
    )
    .await
    .expect("version 1 work");
    c.execute(
        &format!("UPDATE {schema}.checkpoint SET position = $1"),
        &[&e3],
    )
    .await
    .expect("version 1 checkpoint");
    ids
}

fn url(schema: &str) -> String {
    with_params(&server(), &format!("schema={schema}&listen=false"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_is_upgraded_without_losing_work() {
    let schema = fresh_schema("v1");
    let _guard = DropSchema {
        schema: schema.clone(),
        offset: Arc::new(AtomicI64::new(0)),
    };
    let ids = v1_store(&schema).await;
    let (e1, e2, e3) = (ids[0], ids[1], ids[2]);

    // A reader never upgrades: it asks for a writer to do it.
    match PgStore::open_mode(&url(&schema), OpenMode::ReadOnly).await {
        Err(Error::Schema { message, .. }) => {
            assert!(
                message.contains("version 1") && message.contains("for writing"),
                "{message}"
            )
        }
        other => {
            panic!("a read-only open of a version 1 store must ask for an upgrade, got {other:?}")
        }
    }

    let store = PgStore::open_mode(&url(&schema), OpenMode::Existing)
        .await
        .expect("upgrade");
    assert_eq!(store.legacy_checkpoint().await.unwrap(), e3);
    assert!(store.subscriptions().await.unwrap().is_empty());
    let rows = store.queues(&QueueFilter::default()).await.unwrap();
    let q1 = &rows[0];
    assert_eq!(
        (
            q1.stream.as_str(),
            q1.position,
            q1.head,
            q1.next,
            q1.lag,
            q1.priority,
            q1.retries,
            q1.token
        ),
        ("q1", e1, e3, Some(e2), 2, 3, 2, 7),
        "{q1:?}"
    );
    assert_eq!(q1.error.as_deref(), Some("boom"));
    let q2 = &rows[1];
    assert_eq!(
        (q2.stream.as_str(), q2.position, q2.next, q2.lag),
        ("q2", 0, Some(e2), 1)
    );

    // Legacy items are claimable by any broker, with no reaction named, and
    // the lease's mark counts them.
    let got = store
        .claim(&Claim {
            owner: "v2".into(),
            queues: 10,
            events: 10,
            lease: Duration::from_secs(30),
            reactions: vec![],
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let b1 = got.iter().find(|b| b.lease.stream == "q1").unwrap();
    assert_eq!(
        b1.events.iter().map(|p| p.event.id).collect::<Vec<_>>(),
        vec![e2, e3]
    );
    assert!(b1.events.iter().all(|p| p.reactions.is_empty()));
    assert!(
        got.iter().all(|b| !b.lease.suspect),
        "no upgraded queue walks a lapsed batch"
    );
    assert_eq!(
        (
            b1.lease.position,
            b1.lease.retries,
            b1.lease.mark,
            b1.lease.token
        ),
        (e1, 2, 2, 8)
    );
    let r = store
        .settle(&[Settlement::ack(&b1.lease, e3)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    let q1 = store
        .queues(&QueueFilter {
            stream: Some("q1".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (q1.position, q1.lag, q1.next, q1.retries, q1.error),
        (e3, 0, None, 0, None)
    );

    // Now the store reads at this build's version.
    let reader = PgStore::open_mode(&url(&schema), OpenMode::ReadOnly)
        .await
        .expect("a read-only open after the upgrade");
    assert_eq!(reader.legacy_checkpoint().await.unwrap(), e3);
    let c = raw(&server()).await;
    let versions: Vec<i32> = c
        .query(
            &format!("SELECT version FROM {schema}.act_migrations ORDER BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=act_pg::SCHEMA_VERSION).collect::<Vec<_>>());
    // Upgraded queues start with no lapsed batch; each claim since
    // recorded the last event it handed out.
    let walks: Vec<(String, i64, i64)> = c
        .query(
            &format!("SELECT stream, leased_to, suspect_to FROM {schema}.queues ORDER BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        walks,
        vec![("q1".to_string(), e3, 0), ("q2".to_string(), e2, 0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_newer_than_the_code_is_refused_by_every_mode() {
    let schema = fresh_schema("newer");
    let _guard = DropSchema {
        schema: schema.clone(),
        offset: Arc::new(AtomicI64::new(0)),
    };
    drop(PgStore::open(&url(&schema)).await.expect("create"));
    let c = raw(&server()).await;
    c.execute(
        &format!(
            "INSERT INTO {schema}.act_migrations (version, name) VALUES (99, 'from the future')"
        ),
        &[],
    )
    .await
    .unwrap();
    for mode in [OpenMode::Create, OpenMode::Existing, OpenMode::ReadOnly] {
        match PgStore::open_mode(&url(&schema), mode).await {
            Err(Error::Schema { message, .. }) => {
                assert!(
                    message.contains("newer") && message.contains("99"),
                    "{mode:?}: {message}"
                )
            }
            other => panic!("{mode:?} must refuse a newer schema, got {other:?}"),
        }
    }
}

/// The versions a schema's act_migrations records.
async fn versions(c: &tokio_postgres::Client, schema: &str) -> Vec<i32> {
    c.query(
        &format!("SELECT version FROM {schema}.act_migrations ORDER BY 1"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A store at schema 2 (migrations 1 and 2 as released) is upgraded to the
/// current version on open: the migrations are recorded and act_settle is
/// no longer version 2's, where an ack while walking a lapsed batch kept
/// the failed attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_store_is_upgraded_to_3() {
    let schema = fresh_schema("v2up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 2))
        .await
        .unwrap();
    assert!(
        settle_def(&c, &schema)
            .await
            .contains("AND v_walking THEN x.retries"),
        "the test did not build version 2's act_settle"
    );
    let store = upgraded(&c, &schema, &url, 2).await;
    assert!(
        !settle_def(&c, &schema)
            .await
            .contains("AND v_walking THEN x.retries"),
        "act_settle is still version 2's after the upgrade"
    );
    drop(store);
}

/// A store at schema 3 (as released: act_settle knows ack, retry and block)
/// is upgraded on open: its act_settle also records deferrals, and
/// act_ack_within exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_store_is_upgraded_to_4() {
    let schema = fresh_schema("v3up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 3))
        .await
        .unwrap();
    assert!(
        !settle_def(&c, &schema).await.contains("IN (1, 3)"),
        "the test did not build version 3's act_settle"
    );
    let store = upgraded(&c, &schema, &url, 3).await;
    assert!(
        settle_def(&c, &schema).await.contains("IN (1, 3)"),
        "act_settle does not record deferrals after the upgrade"
    );
    let ack_within: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = '{schema}' AND p.proname = 'act_ack_within'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ack_within, 1, "the upgrade adds act_ack_within");
    drop(store);
}

/// A store at schema 4 with work in flight (queue rows holding correlation's
/// marks) is upgraded to 5, where those marks live in their own table: the
/// queues read as before (head, next, lag, priority), a claim's mark counts
/// the items enqueued before the upgrade, an ack removes them, and work
/// enqueued after the upgrade is numbered on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_store_with_pending_work_is_upgraded_to_5() {
    let schema = fresh_schema("v4up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}&listen=false"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 4))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let row = c
            .query_one(
                &format!(
                    "SELECT id FROM {schema}.act_append('a', NULL, ARRAY['Ping'], ARRAY['{{}}'::jsonb], 'c', NULL, NULL, NULL, 0, false, 0)"
                ),
                &[],
            )
            .await
            .expect("a version 4 append");
        ids.push(row.get::<_, i64>(0));
    }
    c.batch_execute(&format!(
        "SELECT * FROM {schema}.act_subscribe(ARRAY['r'], '[[\"Ping\"]]'::jsonb, ARRAY['q'], ARRAY[0::bigint], 0)"
    ))
    .await
    .expect("a version 4 subscription");
    // Version 4's enqueue of the first two events, at priority 2.
    c.execute(
        &format!(
            "SELECT * FROM {schema}.act_enqueue(ARRAY['r'], NULL::text, 0::bigint, $1::bigint, ARRAY['q','q'], ARRAY[$2::bigint, $1::bigint], ARRAY['r','r'], ARRAY[2, 2])"
        ),
        &[&ids[1], &ids[0]],
    )
    .await
    .expect("a version 4 enqueue");

    let store = upgraded(&c, &schema, &url, 4).await;
    let q = store
        .queues(&QueueFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.stream == "q")
        .expect("queue q after the upgrade");
    assert_eq!(
        (q.head, q.next, q.lag, q.priority),
        (ids[1], Some(ids[0]), 2, 2),
        "{q:?}"
    );
    let claim = |owner: &str| claim_r(owner, Duration::from_secs(60));
    let got = store.claim(&claim("b1")).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].lease.mark, 2, "the mark counts version 4's items");
    assert_eq!(got[0].events.len(), 2);
    // The third event is enqueued after the upgrade, while the lease runs:
    // numbered 3, past the lease's mark, so the ack leaves it pending.
    let step = act::Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from: ids[1],
        to: ids[2],
        work: vec![act::Work {
            stream: "q".into(),
            event: ids[2],
            reaction: "r".into(),
            priority: 2,
        }],
    };
    store.enqueue(&step).await.unwrap();
    let lease = got[0].lease.clone();
    let done = store
        .settle(&[Settlement {
            lease: lease.reference(),
            from: lease.position,
            mark: lease.mark,
            acked: Some(ids[1]),
            outcome: act::Outcome::Ack,
        }])
        .await
        .unwrap();
    assert!(done[0].is_ok(), "{done:?}");
    let again = store.claim(&claim("b2")).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "the event enqueued after the upgrade is claimable"
    );
    assert_eq!(again[0].lease.mark, 3);
    assert_eq!(
        again[0]
            .events
            .iter()
            .map(|p| p.event.id)
            .collect::<Vec<_>>(),
        vec![ids[2]]
    );
    drop(store);
}

/// A claim by `owner` of one queue's first 10 events for reaction `r`, the
/// reaction `two_pings_enqueued` and the tests' raw enqueues route to.
fn claim_r(owner: &str, lease: Duration) -> Claim {
    Claim {
        owner: owner.into(),
        queues: 1,
        events: 10,
        lease,
        reactions: vec!["r".into()],
    }
}

/// Claims with [`claim_r`] (owner `b`, a 60 s lease), checks that one
/// queue's batch came back (`what` says why it must), and returns its
/// event ids, for a test that does nothing more with the batch.
async fn claimed_ids(store: &PgStore, what: &str) -> Vec<i64> {
    let got = store
        .claim(&claim_r("b", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{what}: {got:?}");
    got[0].events.iter().map(|p| p.event.id).collect()
}

/// Opens the store at `url`, which upgrades `schema` from version `from`,
/// and checks that every version up to this build's is recorded.
async fn upgraded(c: &tokio_postgres::Client, schema: &str, url: &str, from: i32) -> PgStore {
    let store = PgStore::open(url)
        .await
        .unwrap_or_else(|e| panic!("the upgrade from {from}: {e}"));
    assert_eq!(
        versions(c, schema).await,
        (1..=act_pg::SCHEMA_VERSION).collect::<Vec<_>>()
    );
    store
}

/// The definition of `schema`'s act_settle.
async fn settle_def(c: &tokio_postgres::Client, schema: &str) -> String {
    function_def(c, schema, "act_settle").await
}

/// The definition of a function of the schema.
async fn function_def(c: &tokio_postgres::Client, schema: &str, function: &str) -> String {
    let q = format!(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = '{schema}' AND p.proname = '{function}'"
    );
    c.query_one(&q, &[]).await.unwrap().get(0)
}

/// A store at schema 5 with a leased queue is upgraded to 6: the lease is
/// still renewed, and an enqueue now says which cursors it moved (a second
/// identical step is told it moved nothing and adds nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_store_is_upgraded_to_6_and_enqueue_says_what_it_moved() {
    let schema = fresh_schema("v5up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}&listen=false"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 5))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let row = c
            .query_one(
                &format!(
                    "SELECT id FROM {schema}.act_append('a', NULL, ARRAY['Ping'], ARRAY['{{}}'::jsonb], 'c', NULL, NULL, NULL, 0, false, 0)"
                ),
                &[],
            )
            .await
            .expect("a version 5 append");
        ids.push(row.get::<_, i64>(0));
    }
    c.batch_execute(&format!(
        "SELECT * FROM {schema}.act_subscribe(ARRAY['r'], '[[\"Ping\"]]'::jsonb, ARRAY['q'], ARRAY[0::bigint], 0)"
    ))
    .await
    .expect("a version 5 subscription");
    c.execute(
        &format!(
            "SELECT * FROM {schema}.act_enqueue(ARRAY['r'], NULL::text, 0::bigint, $1::bigint, ARRAY['q'], ARRAY[$1::bigint], ARRAY['r'], ARRAY[0])"
        ),
        &[&ids[0]],
    )
    .await
    .expect("a version 5 enqueue");

    let store = upgraded(&c, &schema, &url, 5).await;
    let got = store
        .claim(&claim_r("b1", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "version 5's work is claimable: {got:?}");
    let renewed = store
        .renew(&[got[0].lease.reference()], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(renewed[0].is_ok(), "a live lease is renewed: {renewed:?}");
    let step = act::Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from: ids[0],
        to: ids[2],
        work: vec![act::Work {
            stream: "q".into(),
            event: ids[2],
            reaction: "r".into(),
            priority: 0,
        }],
    };
    let first = store.enqueue(&step).await.unwrap();
    assert_eq!(
        (first.positions, first.moved),
        (vec![Some(ids[2])], vec![true])
    );
    let second = store.enqueue(&step).await.unwrap();
    assert_eq!(
        (second.positions, second.moved),
        (vec![Some(ids[2])], vec![false]),
        "the second identical step moved nothing"
    );
    drop(store);
}

/// A store at schema 6 with pending work is upgraded to 7: its settle,
/// release and acknowledgement functions are the ones that lock only what
/// passes the fence, a stale holder is still refused, and the work is
/// delivered.
/// Through a store at schema `version`'s own functions: two `Ping`s on
/// stream `a`, reaction `r` subscribed to them into queue `q`, both
/// enqueued. Returns the second event's id (the first is one less).
async fn two_pings_enqueued(c: &tokio_postgres::Client, schema: &str, version: i32) -> i64 {
    let row = c
        .query_one(
            &format!(
                "SELECT max(id) FROM {schema}.act_append('a', NULL, ARRAY['Ping', 'Ping'], \
                 ARRAY['{{}}'::jsonb, '{{}}'::jsonb], 'c', NULL, NULL, NULL, 0, false, 0)"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("a version {version} append: {e}"));
    let last: i64 = row.get(0);
    c.batch_execute(&format!(
        "SELECT * FROM {schema}.act_subscribe(ARRAY['r'], '[[\"Ping\"]]'::jsonb, ARRAY['q'], ARRAY[0::bigint], 0)"
    ))
    .await
    .unwrap_or_else(|e| panic!("a version {version} subscription: {e}"));
    c.execute(
        &format!(
            "SELECT * FROM {schema}.act_enqueue(ARRAY['r'], NULL::text, 0::bigint, $1::bigint, \
             ARRAY['q', 'q'], ARRAY[$1::bigint - 1, $1::bigint], ARRAY['r', 'r'], ARRAY[0, 0])"
        ),
        &[&last],
    )
    .await
    .unwrap_or_else(|e| panic!("a version {version} enqueue: {e}"));
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_store_is_upgraded_to_7_and_its_work_is_settled() {
    let schema = fresh_schema("v6up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}&listen=false"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 6))
        .await
        .unwrap();
    let last = two_pings_enqueued(&c, &schema, 6).await;
    assert!(!settle_def(&c, &schema).await.contains("v_locked"));

    let store = upgraded(&c, &schema, &url, 6).await;
    for f in ["act_settle", "act_release"] {
        let def = function_def(&c, &schema, f).await;
        assert!(def.contains("v_locked"), "{f} is version 7's: {def}");
    }
    // A lease that ends at once, then a second holder.
    let first = store
        .claim(&claim_r("b1", Duration::from_millis(1)))
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "version 6's work is claimable: {first:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        let got = store
            .claim(&claim_r("b2", Duration::from_secs(60)))
            .await
            .unwrap();
        if let Some(b) = got.into_iter().next() {
            break b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 1 ms lease of b1 never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // b1's lease lapsed: its batch is walked one event at a time.
    assert_eq!(
        (second.events.len(), second.lease.suspect),
        (1, true),
        "{second:?}"
    );
    let stale = store
        .settle(&[Settlement::ack(&first[0].lease, last)])
        .await
        .unwrap();
    assert!(stale[0].is_err(), "the stale holder is refused: {stale:?}");
    let done = store
        .settle(&[Settlement::ack(&second.lease, last - 1)])
        .await
        .unwrap();
    assert!(done[0].is_ok(), "the current holder settles: {done:?}");
    let q = store
        .queues(&QueueFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.stream == "q")
        .expect("queue q");
    assert_eq!((q.position, q.lag), (last - 1, 1), "{q:?}");
    drop(store);
}

/// Work of reaction `r` on `queue`.
fn work(queue: &str, event: i64) -> Work {
    Work {
        stream: queue.into(),
        event,
        reaction: "r".into(),
        priority: 0,
    }
}

/// The language of a function of the schema (`sql`, `plpgsql`).
async fn language(c: &tokio_postgres::Client, schema: &str, function: &str) -> String {
    let q = format!(
        "SELECT l.lanname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname = '{schema}' AND p.proname = '{function}'"
    );
    c.query_one(&q, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_7_store_is_upgraded_to_8_and_its_news_is_folded_by_the_new_fold() {
    let schema = fresh_schema("v7up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}&listen=false"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 7))
        .await
        .unwrap();
    assert_eq!(language(&c, &schema, "act_fold").await, "sql");
    // Enqueued by version 7: the queue row learns of it only from the news.
    let last = two_pings_enqueued(&c, &schema, 7).await;
    let news: i64 = c
        .query_one(&format!("SELECT count(*) FROM {schema}.news"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(news, 1, "the enqueue told the queue row by news");

    let store = upgraded(&c, &schema, &url, 7).await;
    assert_eq!(language(&c, &schema, "act_fold").await, "plpgsql");
    let got = store
        .claim(&claim_r("b", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "version 7's news was folded: {got:?}");
    let ids: Vec<i64> = got[0].events.iter().map(|p| p.event.id).collect();
    assert_eq!(ids, vec![last - 1, last]);
    let news: i64 = c
        .query_one(&format!("SELECT count(*) FROM {schema}.news"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(news, 0, "the claim folded the news");
    let done = store
        .settle(&[Settlement::ack(&got[0].lease, last)])
        .await
        .unwrap();
    assert!(done[0].is_ok(), "{done:?}");
    let q = store
        .queues(&QueueFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.stream == "q")
        .expect("queue q");
    assert_eq!((q.position, q.lag), (last, 0), "{q:?}");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_8_store_is_upgraded_to_9_and_the_new_enqueue_numbers_after_the_old() {
    let schema = fresh_schema("v8up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}&listen=false"));
    let c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 8))
        .await
        .unwrap();
    // Items 1 and 2 of queue q, numbered by version 8's enqueue.
    let first = two_pings_enqueued(&c, &schema, 8).await;

    let store = upgraded(&c, &schema, &url, 8).await;
    let more = store
        .append(Append::new(
            "a",
            vec![
                Message::new("Ping", json!({})),
                Message::new("Ping", json!({})),
            ],
        ))
        .await
        .unwrap();
    let (third, fourth) = (more[0].id, more[1].id);
    // The new enqueue, given one item that is there already (the old
    // function's last) beside two new ones, and one new one twice.
    let step = Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from: first,
        to: fourth,
        work: vec![
            work("q", first),
            work("q", third),
            work("q", fourth),
            work("q", fourth),
        ],
    };
    let done = store.enqueue(&step).await.unwrap();
    assert_eq!(done.moved, vec![true]);
    let rows = c
        .query(
            &format!("SELECT event, seq FROM {schema}.items WHERE stream = 'q' ORDER BY event"),
            &[],
        )
        .await
        .unwrap();
    let items: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        items,
        vec![(first - 1, 1), (first, 2), (third, 3), (fourth, 4)],
        "each item once, numbered on from version 8's"
    );
    let ids = claimed_ids(&store, "the upgraded queue's items").await;
    assert_eq!(ids, vec![first - 1, first, third, fourth]);
    drop(store);
}

/// A window claimed under version 11 is acknowledged inside a transaction
/// by version 12's `act_ack_within` (bounded by the queue's next event),
/// which deletes what it acknowledges, and only that, and leaves the queue's
/// next event at the first item left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_11_store_is_upgraded_to_12_and_a_window_claimed_under_11_is_acknowledged_within_a_transaction(
) {
    let schema = fresh_schema("v11up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}&listen=false"));
    let mut c = raw(&server()).await;
    c.batch_execute(&act_pg::testing::store_sql_at(&schema, 11))
        .await
        .unwrap();
    // Items `last - 1` and `last` of queue q, their news folded, the first
    // of them claimed by version 11's claim.
    let last = two_pings_enqueued(&c, &schema, 11).await;
    c.batch_execute(&format!("SELECT {schema}.act_fold_news()"))
        .await
        .unwrap();
    let row = c
        .query_one(
            &format!(
                "SELECT l_token, l_position, l_mark, max(e_id) FROM {schema}.act_claim('o', 1, 1, 60000000, \
                 ARRAY['r'], 'a', 'b', 0) GROUP BY 1, 2, 3"
            ),
            &[],
        )
        .await
        .expect("a version 11 claim");
    let (token, from, mark, claimed): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(claimed, last - 1, "the claim's window is the first item");
    assert!(
        !function_def(&c, &schema, "act_ack_within")
            .await
            .contains("v_next"),
        "version 11's function"
    );

    let store = upgraded(&c, &schema, &url, 11).await;
    assert!(
        function_def(&c, &schema, "act_ack_within")
            .await
            .contains("v_next"),
        "version 12's function"
    );
    // The acknowledgement, in a transaction of its own as `project` makes.
    let tx = c.transaction().await.unwrap();
    let code: i32 = tx
        .query_one(
            &format!("SELECT code FROM {schema}.act_ack_within('q', $1, $2, $3, $4, 0)"),
            &[&token, &from, &mark, &claimed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(code, 0, "the lease taken under version 11 is accepted");
    tx.commit().await.unwrap();
    let row = c
        .query_one(
            &format!(
                "SELECT q.next, q.position, (SELECT array_agg(i.event ORDER BY i.event) FROM {schema}.items i \
                 WHERE i.stream = 'q') FROM {schema}.queues q WHERE q.stream = 'q'"
            ),
            &[],
        )
        .await
        .unwrap();
    let (next, position, left): (Option<i64>, i64, Vec<i64>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (next, position, left),
        (Some(last), last - 1, vec![last]),
        "the acknowledged item is gone, the other is next"
    );
    // The broker's settle after it, then the rest is claimed.
    let code: i32 = c
        .query_one(
            &format!(
                "SELECT code FROM {schema}.act_settle(ARRAY['q'], ARRAY[$1::bigint], ARRAY[$2::bigint], \
                 ARRAY[$3::bigint], ARRAY[$2::bigint], ARRAY[0::smallint], ARRAY[0::bigint], ARRAY[NULL::text], 0)"
            ),
            &[&token, &claimed, &mark],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(code, 0, "the settle after the acknowledgement");
    let ids = claimed_ids(&store, "the item left after the acknowledgement").await;
    assert_eq!(ids, vec![last]);
    drop(store);
}
