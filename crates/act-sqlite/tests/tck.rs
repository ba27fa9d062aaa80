//! The whole conformance kit on SQLite: each test in its own temporary file,
//! on a manual clock; `reopen` opens a second store on the same file, as a
//! second process would.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use act::clock::ManualClock;
use act::tck::{Backend, Fixture};
use act::Store;
use act_sqlite::{SqliteOptions, SqliteStore};

struct Sqlite;

struct Guard {
    _dir: tempfile::TempDir,
    path: PathBuf,
    clock: ManualClock,
}

async fn open(path: &std::path::Path, clock: &ManualClock) -> Arc<dyn Store> {
    let options = SqliteOptions {
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    Arc::new(
        SqliteStore::open_with(path, options)
            .await
            .expect("open sqlite"),
    )
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn open(&self) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("act.db");
        let clock = ManualClock::new();
        let store = open(&path, &clock).await;
        let mut f = Fixture::new(store, Arc::new(clock.clone()));
        f.guard = Some(Box::new(Guard {
            _dir: dir,
            path,
            clock,
        }) as Box<dyn Any + Send + Sync>);
        f
    }

    async fn reopen(&self, fixture: &Fixture) -> Arc<dyn Store> {
        let g = fixture
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<Guard>())
            .expect("a sqlite fixture");
        open(&g.path, &g.clock).await
    }
}

act::tck_suite!(Sqlite);

/// The projection kit: a table `applied` in the store's own file.
struct Projector {
    store: Arc<SqliteStore>,
    path: PathBuf,
}

#[async_trait::async_trait]
impl act::tck::projection::Projector for Projector {
    async fn create(&self) {
        let c = rusqlite::Connection::open(&self.path).expect("open the store's file");
        c.execute_batch("CREATE TABLE applied (event INTEGER NOT NULL)")
            .expect("create the table");
    }

    async fn apply(
        &self,
        ctx: &act::Context,
        events: &[Arc<act::Event>],
    ) -> Result<(), act::HandlerError> {
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let poison = act::tck::projection::poisoned(events);
        self.store
            .project(ctx, events, move |tx| {
                for id in &ids {
                    tx.execute("INSERT INTO applied (event) VALUES (?1)", [id])?;
                }
                match poison {
                    Some(p) => Err(format!("event {p} is poison").into()),
                    None => Ok(()),
                }
            })
            .await
    }

    async fn rows(&self) -> Vec<i64> {
        let c = rusqlite::Connection::open(&self.path).expect("open the store's file");
        let mut q = c
            .prepare("SELECT event FROM applied ORDER BY event")
            .expect("read the table");
        let rows = q.query_map([], |r| r.get(0)).expect("rows");
        rows.map(|r| r.expect("a row")).collect()
    }
}

async fn projected() -> (Fixture, Arc<dyn act::tck::projection::Projector>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("act.db");
    let clock = ManualClock::new();
    let options = SqliteOptions {
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    let store = Arc::new(
        SqliteStore::open_with(&path, options)
            .await
            .expect("open sqlite"),
    );
    let mut f = Fixture::new(store.clone(), Arc::new(clock.clone()));
    f.guard = Some(Box::new(Guard {
        _dir: dir,
        path: path.clone(),
        clock,
    }) as Box<dyn Any + Send + Sync>);
    (f, Arc::new(Projector { store, path }))
}

act::tck_projection!(projected);
