//! The whole conformance kit on Redis: each test under its own random key
//! prefix on the real server at 127.0.0.1:6379, with the store's clock moved
//! by an offset instead of sleeping; `reopen` opens a second store (its own
//! connections and listener) on the same prefix and clock, as a second
//! process would. Each test's keys are deleted when it ends.

mod support;

use std::any::Any;
use std::sync::Arc;

use act::tck::{Backend, Fixture};
use act::Store;
use act_redis::RedisOptions;

use support::{Cleanup, OffsetClock};

struct Redis;

struct Guard {
    options: RedisOptions,
    _cleanup: Cleanup,
}

#[async_trait::async_trait]
impl Backend for Redis {
    async fn open(&self) -> Fixture {
        let prefix = support::fresh_prefix("tck");
        let options = support::options(&prefix);
        let store: Arc<dyn Store> = Arc::new(support::open(&options).await);
        let mut f = Fixture::new(store, Arc::new(OffsetClock(options.clock_offset.clone())));
        f.guard = Some(Box::new(Guard {
            options,
            _cleanup: Cleanup { prefix },
        }) as Box<dyn Any + Send + Sync>);
        f
    }

    async fn reopen(&self, fixture: &Fixture) -> Arc<dyn Store> {
        let g = fixture
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<Guard>())
            .expect("a redis fixture");
        Arc::new(support::open(&g.options).await)
    }
}

act::tck_suite!(Redis);
