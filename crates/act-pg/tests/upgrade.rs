//! Schema migration 2 carries a version 1 store forward: its correlation
//! checkpoint stays readable, its pending work becomes items without a
//! reaction (claimable, delivered as version 1 did), acknowledged work is
//! dropped; a read-only open asks for the upgrade instead of doing it; a
//! store newer than the code is refused.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::{Claim, Error, OpenMode, QueueFilter, QueueStore, Settlement};
use act_pg::PgStore;
use common::{fresh_schema, raw, server, with_params, DropSchema};

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

/// A store at schema 2 (as released, with its act_settle) is upgraded to 3
/// and on to the current version on open: the migrations are recorded and
/// act_settle is no longer version 2's, where an ack while walking a lapsed
/// batch kept the failed attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_store_is_upgraded_to_3() {
    let schema = fresh_schema("v2up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}"));
    drop(PgStore::open(&url).await.expect("a fresh store"));
    // Put the schema back at version 2: the released act_settle, no row 3.
    let v2 = include_str!("../src/sql/v2.sql");
    let start = v2
        .find("CREATE FUNCTION {s}.act_settle(")
        .expect("v2 defines act_settle");
    let body = &v2[start..];
    let end = body.find("END $$;").expect("the function's end") + "END $$;".len();
    let released = body[..end]
        .replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
        .replace("{s}", &schema);
    let c = raw(&server()).await;
    c.batch_execute(&released).await.unwrap();
    c.execute(
        &format!("DELETE FROM {schema}.act_migrations WHERE version >= 3"),
        &[],
    )
    .await
    .unwrap();
    drop_v4_functions(&c, &schema).await;
    assert!(
        settle_def(&c, &schema)
            .await
            .contains("AND v_walking THEN x.retries"),
        "the test did not put back version 2's act_settle"
    );
    let store = PgStore::open(&url).await.expect("the upgrade from 2");
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
    assert!(
        !settle_def(&c, &schema)
            .await
            .contains("AND v_walking THEN x.retries"),
        "act_settle is still version 2's after the upgrade"
    );
    drop(store);
}

/// A store at schema 3 (as released: act_settle knows ack, retry and block)
/// is upgraded to 4 on open, whose act_settle also records deferrals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_store_is_upgraded_to_4() {
    let schema = fresh_schema("v3up");
    let _drop = DropSchema {
        schema: schema.clone(),
        offset: Arc::default(),
    };
    let url = with_params(&server(), &format!("schema={schema}"));
    drop(PgStore::open(&url).await.expect("a fresh store"));
    let v3 = include_str!("../src/sql/v3.sql");
    let start = v3
        .find("CREATE OR REPLACE FUNCTION {s}.act_settle(")
        .expect("v3 defines act_settle");
    let released = v3[start..].replace("{s}", &schema);
    let c = raw(&server()).await;
    c.batch_execute(&released).await.unwrap();
    c.execute(
        &format!("DELETE FROM {schema}.act_migrations WHERE version >= 4"),
        &[],
    )
    .await
    .unwrap();
    drop_v4_functions(&c, &schema).await;
    assert!(
        !settle_def(&c, &schema).await.contains("IN (1, 3)"),
        "the test did not put back version 3's act_settle"
    );
    let store = PgStore::open(&url).await.expect("the upgrade to 4");
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
    assert_eq!(versions, vec![1, 2, 3, 4]);
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

/// Removes what migration 4 added besides its new act_settle, so the
/// schema is as a release before 4 left it.
async fn drop_v4_functions(c: &tokio_postgres::Client, schema: &str) {
    c.batch_execute(&format!(
        "DROP FUNCTION {schema}.act_ack_within(text, bigint, bigint, bigint, bigint, bigint)"
    ))
    .await
    .unwrap();
}

/// The definition of `schema`'s act_settle.
async fn settle_def(c: &tokio_postgres::Client, schema: &str) -> String {
    let q = format!(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = '{schema}' AND p.proname = 'act_settle'"
    );
    c.query_one(&q, &[]).await.unwrap().get(0)
}
