//! Open modes: only `Create` creates a store; `Existing` and `ReadOnly`
//! refuse a missing one and leave no trace; `ReadOnly` reads through
//! read-only sessions and refuses to write.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use act::{Append, Error, EventStore, Message, OpenMode, Query, QueueFilter, QueueStore};
use act_pg::PgStore;
use common::{fresh_schema, raw, server, with_params, DropSchema};
use serde_json::json;

fn url(schema: &str) -> String {
    with_params(&server(), &format!("schema={schema}"))
}

async fn schema_exists(schema: &str) -> bool {
    raw(&server())
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_create_creates_a_store() {
    let schema = fresh_schema("modes");
    let _guard = DropSchema {
        schema: schema.clone(),
        offset: Arc::new(AtomicI64::new(0)),
    };
    for mode in [OpenMode::Existing, OpenMode::ReadOnly] {
        match PgStore::open_mode(&url(&schema), mode).await {
            Err(Error::Missing { store }) => assert!(store.contains(&schema), "{store}"),
            other => panic!("{mode:?} must not open a missing store, got {other:?}"),
        }
        assert!(!schema_exists(&schema).await, "{mode:?} created the schema");
    }
    // An empty schema (made by someone else) is not a store either.
    raw(&server())
        .await
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    assert!(matches!(
        PgStore::open_mode(&url(&schema), OpenMode::Existing).await,
        Err(Error::Missing { .. })
    ));
    assert!(matches!(
        PgStore::open_mode(&url(&schema), OpenMode::ReadOnly).await,
        Err(Error::Missing { .. })
    ));
    let created = PgStore::open_mode(&url(&schema), OpenMode::Create)
        .await
        .expect("create");
    created
        .append(Append::new("a", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap();
    let existing = PgStore::open_mode(&url(&schema), OpenMode::Existing)
        .await
        .expect("existing");
    assert_eq!(
        existing.head().await.unwrap(),
        created.head().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_reads_through_read_only_sessions_and_refuses_writes() {
    let schema = fresh_schema("ro");
    let _guard = DropSchema {
        schema: schema.clone(),
        offset: Arc::new(AtomicI64::new(0)),
    };
    let writer = PgStore::open(&url(&schema)).await.unwrap();
    writer
        .append(Append::new(
            "a",
            vec![Message::new("Ping", json!({"n": 1}))],
        ))
        .await
        .unwrap();
    // The sessions are read-only as the URL asks (as a read-only database
    // would make them): opening and reading must run no write.
    let ro_url = with_params(
        &url(&schema),
        "options=-c%20default_transaction_read_only%3Don",
    );
    let reader = PgStore::open_mode(&ro_url, OpenMode::ReadOnly)
        .await
        .expect("read-only open");
    assert_eq!(reader.query(&Query::new()).await.unwrap().len(), 1);
    assert!(reader
        .queues(&QueueFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(reader.subscriptions().await.unwrap().is_empty());
    assert_eq!(reader.legacy_checkpoint().await.unwrap(), 0);
    assert_eq!(reader.next_due(&[]).await.unwrap(), None);
    assert!(reader.replays().await.unwrap().is_empty());
    match reader
        .append(Append::new("a", vec![Message::new("Ping", json!({}))]))
        .await
    {
        Err(Error::InvalidInput(m)) => assert!(m.contains("read-only"), "{m}"),
        other => panic!("a read-only store must refuse to append, got {other:?}"),
    }
    assert!(matches!(
        reader.unblock(&["q".to_string()]).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        reader.reset("q", 0).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        writer.query(&Query::new()).await.unwrap().len(),
        1,
        "nothing was written"
    );
}
