//! Shared fixtures of the Redis tests: the server they use, a fresh random
//! prefix per test, and a guard that deletes the prefix's keys when dropped.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::tck::TestClock;
use act_redis::{RedisOptions, RedisStore};

/// The server the tests talk to (real Redis, never a mock).
pub const URL: &str = "redis://127.0.0.1:6379/0";

/// A prefix no other test uses.
pub fn fresh_prefix(what: &str) -> String {
    format!("test-{what}-{:016x}", fastrand::u64(..))
}

/// Options on a fresh prefix with their own clock offset.
pub fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        prefix: prefix.to_string(),
        ..RedisOptions::default()
    }
}

pub async fn open(options: &RedisOptions) -> RedisStore {
    RedisStore::open_with(URL, options.clone())
        .await
        .expect("open the Redis store (is Redis running on 127.0.0.1:6379?)")
}

/// Moves a store's clock by its offset: instant and deterministic.
pub struct OffsetClock(pub Arc<AtomicI64>);

#[async_trait::async_trait]
impl TestClock for OffsetClock {
    async fn advance(&self, by: Duration) {
        let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

/// Deletes every key under its prefix when dropped. Drop cannot await, so
/// the cleanup is a short blocking one on its own thread.
pub struct Cleanup {
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pattern = format!("{{{}}}:*", self.prefix);
        let done = std::thread::spawn(move || delete_matching(&pattern)).join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not clean up keys of {}: {done:?}", self.prefix);
        }
    }
}

/// Deletes keys matching `pattern` (SCAN: tests only, never a hot path).
pub fn delete_matching(pattern: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(URL)?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(&keys).exec(&mut c)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A plain synchronous connection for poking at the server in tests.
pub fn raw() -> redis::Connection {
    redis::Client::open(URL)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("connect to Redis")
}
