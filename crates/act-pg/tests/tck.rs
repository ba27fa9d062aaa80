//! The whole conformance kit on PostgreSQL, each test in its own schema.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

act::tck_suite!(common::Postgres);

/// The projection kit: a table `applied` in the store's own schema.
struct Projector {
    store: Arc<act_pg::PgStore>,
    table: String,
}

#[async_trait::async_trait]
impl act::tck::projection::Projector for Projector {
    async fn create(&self) {
        common::raw(&common::server())
            .await
            .batch_execute(&format!(
                "CREATE TABLE {} (event bigint NOT NULL)",
                self.table
            ))
            .await
            .expect("create the table");
    }

    async fn apply(
        &self,
        ctx: &act::Context,
        events: &[Arc<act::Event>],
    ) -> Result<(), act::HandlerError> {
        let poison = act::tck::projection::poisoned(events);
        let insert = format!("INSERT INTO {} (event) VALUES ($1)", self.table);
        self.store
            .project(ctx, events, async |tx| {
                for e in events {
                    tx.execute(&insert, &[&e.id]).await?;
                }
                match poison {
                    Some(p) => Err(format!("event {p} is poison").into()),
                    None => Ok(()),
                }
            })
            .await
    }

    async fn rows(&self) -> Vec<i64> {
        common::raw(&common::server())
            .await
            .query(
                &format!("SELECT event FROM {} ORDER BY event", self.table),
                &[],
            )
            .await
            .expect("read the table")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

async fn projected() -> (act::tck::Fixture, Arc<dyn act::tck::projection::Projector>) {
    let schema = common::fresh_schema("proj");
    let offset = Arc::new(AtomicI64::new(0));
    let store = Arc::new(common::open(common::options(&schema, &offset)).await);
    let mut f =
        act::tck::Fixture::new(store.clone(), Arc::new(common::OffsetClock(offset.clone())));
    let table = format!("{schema}.applied");
    f.guard = Some(Box::new(common::DropSchema { schema, offset }));
    (f, Arc::new(Projector { store, table }))
}

act::tck_projection!(projected);
