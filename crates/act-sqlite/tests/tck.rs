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
