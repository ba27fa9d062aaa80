//! Shared fixtures of the PostgreSQL tests: a fresh schema per test on the
//! server at 127.0.0.1:5432 (override with ACT_TEST_POSTGRES), dropped when
//! the test ends, and a clock moved by offset instead of sleeping.

#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::tck::{Backend, Fixture, TestClock};
use act::Store;
use act_pg::{PgOptions, PgStore};

pub fn server() -> String {
    std::env::var("ACT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name no other test uses.
pub fn fresh_schema(tag: &str) -> String {
    format!("act_t_{tag}_{:016x}", fastrand::u64(..))
}

/// The database clock plus a shared offset.
pub struct OffsetClock(pub Arc<AtomicI64>);

#[async_trait::async_trait]
impl TestClock for OffsetClock {
    async fn advance(&self, by: Duration) {
        self.0.fetch_add(
            i64::try_from(by.as_micros()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

/// Drops the schema when the test ends (on a std thread: Drop cannot await).
pub struct DropSchema {
    pub schema: String,
    pub offset: Arc<AtomicI64>,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&server(), tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}

pub fn options(schema: &str, offset: &Arc<AtomicI64>) -> PgOptions {
    PgOptions {
        schema: schema.to_string(),
        pool_size: 8,
        clock_offset: offset.clone(),
        ..Default::default()
    }
}

pub async fn open(options: PgOptions) -> PgStore {
    let config: tokio_postgres::Config = server().parse().expect("a PostgreSQL URL");
    PgStore::open_with(config, options, &server())
        .await
        .expect("open the PostgreSQL store")
}

/// The conformance kit's view of PostgreSQL.
pub struct Postgres;

#[async_trait::async_trait]
impl Backend for Postgres {
    async fn open(&self) -> Fixture {
        let schema = fresh_schema("kit");
        let offset = Arc::new(AtomicI64::new(0));
        let store: Arc<dyn Store> = Arc::new(open(options(&schema, &offset)).await);
        let mut f = Fixture::new(store, Arc::new(OffsetClock(offset.clone())));
        f.guard = Some(Box::new(DropSchema { schema, offset }));
        f
    }

    async fn reopen(&self, f: &Fixture) -> Arc<dyn Store> {
        let g = f
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<DropSchema>())
            .expect("a PostgreSQL fixture");
        Arc::new(open(options(&g.schema, &g.offset)).await)
    }
}

/// A plain connection to the test server (its driver task runs in the
/// background until the client is dropped).
pub async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

/// `url` with act's query parameters added (`schema=…&pool_size=…`).
pub fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}
