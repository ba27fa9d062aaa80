//! The store's connection: one multiplexed Redis connection that reconnects
//! by itself (redis-rs `ConnectionManager`), the key prefix, and the test
//! clock offset every script receives.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, Script, ScriptInvocation, ServerErrorKind, Value};

use crate::error;
use crate::reply::Bad;

/// How many times a script that keeps meeting `NOSCRIPT` is loaded again.
const NOSCRIPT_RELOADS: usize = 3;

/// A cheap handle: clones share the connection.
#[derive(Clone)]
pub(crate) struct Conn {
    manager: ConnectionManager,
    /// `{prefix}:`, prepended to every key.
    prefix: Arc<str>,
    /// The store's URL with the password hidden, for errors.
    store: Arc<str>,
    offset: Arc<AtomicI64>,
}

impl Conn {
    pub(crate) fn new(
        manager: ConnectionManager,
        prefix: &str,
        store: Arc<str>,
        offset: Arc<AtomicI64>,
    ) -> Self {
        Conn {
            manager,
            prefix: Arc::from(format!("{{{prefix}}}:")),
            store,
            offset,
        }
    }

    /// The full name of one of the store's keys.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The store, for error messages.
    pub(crate) fn store(&self) -> &str {
        &self.store
    }

    /// An invocation of `script` with the two arguments every script takes
    /// first: the key prefix and the clock offset.
    pub(crate) fn script(&self, script: &'static Script) -> ScriptInvocation<'static> {
        let mut inv = script.prepare_invoke();
        inv.arg(&*self.prefix)
            .arg(self.offset.load(Ordering::SeqCst));
        inv
    }

    /// Runs a script: one round trip (three after a `SCRIPT FLUSH` or a
    /// server restart: `NOSCRIPT`, load, run). A script flushed again
    /// between its load and its run (it did not run) is loaded again, a
    /// few times.
    pub(crate) async fn run(&self, inv: &ScriptInvocation<'_>) -> act::Result<Value> {
        let mut c = self.manager.clone();
        let mut reloads = 0;
        loop {
            match inv.invoke_async(&mut c).await {
                Err(e)
                    if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
                        && reloads < NOSCRIPT_RELOADS =>
                {
                    reloads += 1;
                }
                r => return r.map_err(|e| error::map(&self.store, e)),
            }
        }
    }

    /// Runs one plain command.
    pub(crate) async fn command(&self, cmd: &redis::Cmd) -> act::Result<Value> {
        let mut c = self.manager.clone();
        cmd.query_async(&mut c)
            .await
            .map_err(|e| error::map(&self.store, e))
    }

    /// The integer stored at one of the store's keys (0 when missing).
    pub(crate) async fn counter(&self, name: &str) -> act::Result<i64> {
        let v = self.command(redis::cmd("GET").arg(self.key(name))).await?;
        crate::reply::opt_int(&v)
            .map(|v| v.unwrap_or(0))
            .map_err(|b| self.bad(b))
    }

    /// A reply of the wrong shape.
    pub(crate) fn bad(&self, b: Bad) -> act::Error {
        error::malformed(&self.store, b)
    }

    /// Deletes every key under the prefix (SCAN + UNLINK in pages). Not for
    /// hot paths: it walks the whole keyspace.
    pub(crate) async fn delete_prefix(&self) -> act::Result<u64> {
        let mut c = self.manager.clone();
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(|e| error::map(&self.store, e))?;
            if !keys.is_empty() {
                deleted += keys.len() as u64;
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .exec_async(&mut c)
                    .await
                    .map_err(|e| error::map(&self.store, e))?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
