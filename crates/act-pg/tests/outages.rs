//! Promise 11 on PostgreSQL, against a private server this test owns (never
//! the shared one): while the server is read-only or down, every call fails
//! with a transient error; once it is back, the same store works again on
//! its own — nobody kills connections, nobody reopens the store. A
//! connection that failed because its session went read-only is dropped,
//! not returned to the pool.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use act::{Append, Claim, Error, EventStore, Message, OpenMode, Query, QueueFilter, QueueStore};
use act_pg::PgStore;
use act_testservers::postgres::PrivatePostgres;
use common::{raw, with_params};
use serde_json::json;

/// How long a recovery may take before the test fails.
const RECOVERY: Duration = Duration::from_secs(30);

fn server() -> PrivatePostgres {
    tokio::task::block_in_place(PrivatePostgres::start)
}

fn ping() -> Append {
    Append::new("s", vec![Message::new("Ping", json!({}))])
}

fn claim() -> Claim {
    Claim {
        owner: "o".into(),
        queues: 1,
        events: 1,
        lease: Duration::from_secs(30),
        reactions: vec!["r".into()],
    }
}

fn transient(what: &str, r: Result<impl std::fmt::Debug, Error>) {
    match r {
        Err(e) if e.is_transient() => {}
        other => panic!("{what} must fail with a transient error, got {other:?}"),
    }
}

/// Backend pids of the store's sessions (application_name `act-store`).
async fn sessions(url: &str) -> BTreeSet<i32> {
    raw(url)
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'act-store'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fails_transiently_while_the_server_is_read_only_and_recovers_when_it_is_not() {
    let pg = server();
    let admin = pg.url("postgres");
    let url = with_params(
        &admin,
        "schema=act&pool_size=1&listen=false&application_name=act-store",
    );
    let store = PgStore::open(&url).await.expect("open");
    store.append(ping()).await.expect("a first append");
    let before = sessions(&admin).await;
    assert_eq!(before.len(), 1, "one pooled session");

    tokio::task::block_in_place(|| pg.set_read_only(true));
    // Sessions pick the setting up at their next command: wait for the
    // first refusal, then every write keeps failing, transiently. Appends
    // that still got in meanwhile are in the log.
    let started = Instant::now();
    let mut written = 1;
    while store.append(ping()).await.is_ok() {
        written += 1;
        assert!(
            started.elapsed() < RECOVERY,
            "the server never turned read-only"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        transient(
            "an append to a read-only server",
            store.append(ping()).await,
        );
        transient("a claim on a read-only server", store.claim(&claim()).await);
    }
    let during = sessions(&admin).await;
    assert!(
        before.is_disjoint(&during),
        "the read-only session went back to the pool: {before:?} then {during:?}"
    );

    // Readers work meanwhile, and a read-only open runs no write at all.
    assert_eq!(store.query(&Query::new()).await.unwrap().len(), written);
    let reader = PgStore::open_mode(&url, OpenMode::ReadOnly)
        .await
        .expect("a read-only open of a read-only server");
    assert_eq!(reader.query(&Query::new()).await.unwrap().len(), written);
    assert!(reader
        .queues(&QueueFilter::default())
        .await
        .unwrap()
        .is_empty());
    transient(
        "creating a store on a read-only server",
        PgStore::open(&with_params(&admin, "schema=other"))
            .await
            .map(drop),
    );

    tokio::task::block_in_place(|| pg.set_read_only(false));
    let started = Instant::now();
    loop {
        match store.append(ping()).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && started.elapsed() < RECOVERY => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the store did not recover after the server turned writable: {e}"),
        }
    }
    assert!(store.claim(&claim()).await.is_ok());
    assert_eq!(store.query(&Query::new()).await.unwrap().len(), written + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fails_transiently_while_the_server_is_down_and_recovers_when_it_is_back() {
    let pg = server();
    let url = with_params(
        &pg.url("postgres"),
        "schema=act&pool_size=4&connect_timeout=5",
    );
    let store = PgStore::open(&url).await.expect("open");
    // Some pooled sessions and the LISTEN session exist before the outage.
    let _wake = store.wake();
    for _ in 0..4 {
        store.append(ping()).await.expect("an append");
    }

    tokio::task::block_in_place(|| pg.stop_immediate());
    for _ in 0..3 {
        transient(
            "an append while the server is down",
            store.append(ping()).await,
        );
        transient(
            "a query while the server is down",
            store.query(&Query::new()).await,
        );
        transient(
            "a claim while the server is down",
            store.claim(&claim()).await,
        );
        transient(
            "a listing while the server is down",
            store.queues(&QueueFilter::default()).await,
        );
    }

    tokio::task::block_in_place(|| pg.start_again());
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match store.append(ping()).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && started.elapsed() < RECOVERY => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the store did not recover after the restart: {e}"),
        }
    }
    assert!(
        failures <= 4,
        "each stale pooled session may fail once, then it is gone: {failures} failures"
    );
    assert_eq!(store.query(&Query::new()).await.unwrap().len(), 5);
    assert!(store.claim(&claim()).await.is_ok());
}
