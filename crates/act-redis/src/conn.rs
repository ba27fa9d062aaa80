//! The store's connection: one multiplexed Redis connection that reconnects
//! by itself (redis-rs `ConnectionManager`), the key prefix, and the test
//! clock offset every script receives.
//!
//! The connection carries the store's client name (`CLIENT SETNAME`), also
//! after the manager replaced it. redis-rs 1.8 has no setting for a name
//! it would send on every new connection (only the library name, `CLIENT
//! SETINFO`), and the manager runs nothing of ours when it reconnects. It
//! reconnects on exactly two signals: a call that failed with an I/O or
//! unrecoverable error (every call goes through [`Conn`], so it sees them
//! all) and, on RESP3, a disconnection push (which the manager forwards to
//! the push sender set here). Either marks the name as lost, and the next
//! call names the connection again first: one more round trip after a
//! reconnect, none otherwise. Until that call, `CLIENT LIST` shows the new
//! connection without a name.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, PushKind, RedisError, Script, ScriptInvocation, ServerErrorKind, Value};

use crate::error;
use crate::options::{RedisOptions, RedisServer};
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
    naming: Arc<Naming>,
}

/// The connection's name and whether the connection the manager holds now
/// may lack it (see the module docs).
struct Naming {
    name: String,
    lost: AtomicBool,
}

impl Naming {
    /// Marks the name as lost when `e` is one the manager reconnects after
    /// (the same tests it makes).
    fn note(&self, e: &RedisError) {
        if e.is_io_error() || e.is_unrecoverable_error() {
            self.lost.store(true, Ordering::SeqCst);
        }
    }
}

impl Conn {
    /// Connects (with the URL's timeouts, two retries) and names the
    /// connection: a few round trips. For `rediss://`, a first connection
    /// that is not up within the connect timeout is checked for a plaintext
    /// port ([`crate::plaintext`]).
    pub(crate) async fn open(
        client: redis::Client,
        server: &RedisServer,
        options: &RedisOptions,
        store: Arc<str>,
    ) -> act::Result<Self> {
        let naming = Arc::new(Naming {
            name: options.client_name.clone(),
            lost: AtomicBool::new(true),
        });
        let mut config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connect_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        if server.resp3 {
            // redis-rs accepts a push sender on RESP3 connections only.
            let naming = naming.clone();
            config = config.set_push_sender(move |push: redis::PushInfo| {
                if push.kind == PushKind::Disconnection {
                    naming.lost.store(true, Ordering::SeqCst);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        }
        let connecting = async {
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| error::map(&store, e))
        };
        let manager = if server.tls.is_some() {
            crate::plaintext::refuse_plaintext_port(
                connecting,
                server,
                options.connect_timeout,
                &store,
            )
            .await?
        } else {
            connecting.await?
        };
        let conn = Conn {
            manager,
            prefix: Arc::from(format!("{{{}}}:", options.prefix)),
            store,
            offset: options.clock_offset.clone(),
            naming,
        };
        conn.name_if_lost().await?;
        Ok(conn)
    }

    /// Names the connection (`CLIENT SETNAME`) when it may have lost its
    /// name: one round trip then, nothing otherwise. A failure leaves the
    /// name marked as lost.
    async fn name_if_lost(&self) -> act::Result<()> {
        if !self.naming.lost.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let mut c = self.manager.clone();
        let named = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.naming.name)
            .exec_async(&mut c)
            .await;
        named.map_err(|e| {
            self.naming.lost.store(true, Ordering::SeqCst);
            error::map(&self.store, e)
        })
    }

    /// `r`, noting an error the manager reconnects after.
    fn noted<T>(&self, r: redis::RedisResult<T>) -> act::Result<T> {
        r.map_err(|e| {
            self.naming.note(&e);
            error::map(&self.store, e)
        })
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
        self.name_if_lost().await?;
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
                r => return self.noted(r),
            }
        }
    }

    /// Runs two scripts in one pipeline: one round trip, run by the server
    /// in that order. Returns each script's own reply or error (a
    /// `NOSCRIPT` is not loaded here: see [`no_script`]); `Err` when the
    /// pipeline itself failed (no connection, a reply lost).
    #[allow(clippy::type_complexity)]
    pub(crate) async fn run_two(
        &self,
        first: &ScriptInvocation<'_>,
        second: &ScriptInvocation<'_>,
    ) -> act::Result<(redis::RedisResult<Value>, redis::RedisResult<Value>)> {
        self.name_if_lost().await?;
        let mut c = self.manager.clone();
        let replies: Vec<redis::RedisResult<Value>> = self.noted(
            redis::pipe()
                .invoke_script(first)
                .invoke_script(second)
                .ignore_errors()
                .query_async(&mut c)
                .await,
        )?;
        let mut replies = replies.into_iter();
        match (replies.next(), replies.next(), replies.next()) {
            (Some(a), Some(b), None) => Ok((a, b)),
            _ => {
                Err(self.bad("a pipeline of two scripts answered another number of replies".into()))
            }
        }
    }

    /// An error of one script of [`Conn::run_two`], mapped (and noted, for
    /// the manager's reconnect).
    pub(crate) fn failed(&self, e: RedisError) -> act::Error {
        self.noted::<()>(Err(e))
            .err()
            .unwrap_or_else(|| self.bad("an error that was not".into()))
    }

    /// Runs one plain command.
    pub(crate) async fn command(&self, cmd: &redis::Cmd) -> act::Result<Value> {
        self.name_if_lost().await?;
        let mut c = self.manager.clone();
        self.noted(cmd.query_async(&mut c).await)
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
        self.name_if_lost().await?;
        let mut c = self.manager.clone();
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self.noted(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await,
            )?;
            if !keys.is_empty() {
                deleted += keys.len() as u64;
                self.noted(redis::cmd("UNLINK").arg(&keys).exec_async(&mut c).await)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// True when a script did not run because the server does not hold it.
pub(crate) fn no_script(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}
