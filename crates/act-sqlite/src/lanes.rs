//! Dedicated threads that own SQLite connections, so no SQLite call ever
//! blocks the async runtime.
//!
//! A [`Lane`] is a queue of jobs served by one or more threads, each with its
//! own connection: one writer lane (all writes, each in a `BEGIN IMMEDIATE`
//! transaction, retried with backoff while another process holds the lock)
//! and one reader lane (queries on WAL snapshots, in parallel with writes).
//! Dropping the store closes the lanes; the threads finish the jobs already
//! queued, close their connections and exit (`SqliteStore::close` waits for
//! that).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::Failure;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

thread_local! {
    /// The `synchronous` setting of the connection owned by this thread, once
    /// a write has set it (each lane thread owns exactly one connection).
    static SYNC_FULL: Cell<Option<bool>> = const { Cell::new(None) };
}

/// How a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// `synchronous=FULL`: fsynced before the commit returns.
    Full,
    /// `synchronous=NORMAL`: in the WAL, not yet fsynced. A crash of the
    /// process keeps it; a power loss or OS crash may lose it and every later
    /// write, never an earlier one (the WAL is replayed as a prefix).
    Normal,
}

/// How long a write keeps retrying while other processes hold the lock.
const BUSY_PATIENCE: Duration = Duration::from_secs(30);

/// A job queue served by threads owning connections.
pub(crate) struct Lane {
    tx: mpsc::Sender<Job>,
    store: Arc<str>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Lane {
    /// Starts one thread per connection, all serving the same queue.
    pub(crate) fn start(
        name: &str,
        store: Arc<str>,
        connections: Vec<Connection>,
    ) -> std::io::Result<Lane> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(connections.len());
        for (i, mut conn) in connections.into_iter().enumerate() {
            let rx = rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("act-sqlite-{name}-{i}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        rx.recv()
                    };
                    let Ok(job) = job else { break };
                    // A panicking job drops its reply sender: the caller gets
                    // an error and the thread keeps serving.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                })?;
            threads.push(thread);
        }
        Ok(Lane { tx, store, threads })
    }

    /// Stops taking jobs and returns the threads: each finishes the jobs
    /// already queued, closes its connection and exits.
    pub(crate) fn close(self) -> Vec<std::thread::JoinHandle<()>> {
        drop(self.tx);
        self.threads
    }

    /// Runs `f` on one of the lane's connections and waits for its result.
    pub(crate) async fn run<R, F>(&self, f: F) -> act::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, Failure> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        let sent = self.tx.send(job);
        if sent.is_err() {
            return Err(self.stopped());
        }
        match rx.await {
            Ok(r) => r.map_err(|f| f.into_act(&self.store)),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committing on success
    /// with the given durability. While another connection holds the write
    /// lock, waits and retries with backoff (up to 30 s) before reporting
    /// [`act::Error::Unavailable`].
    pub(crate) async fn write<R, F>(&self, sync: Sync, f: F) -> act::Result<R>
    where
        R: Send + 'static,
        F: Fn(&Transaction) -> Result<R, Failure> + Send + 'static,
    {
        self.run(move |conn| {
            let full = sync == Sync::Full;
            if SYNC_FULL.get() != Some(full) {
                conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
                SYNC_FULL.set(Some(full));
            }
            let deadline = Instant::now() + BUSY_PATIENCE;
            let mut pause = Duration::from_millis(1);
            loop {
                let attempt = (|| -> Result<R, Failure> {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let r = f(&tx)?;
                    tx.commit()?;
                    Ok(r)
                })();
                match attempt {
                    Err(e) if e.is_busy() && Instant::now() < deadline => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    /// Runs `f` in a read transaction (one consistent WAL snapshot), retrying
    /// while the database is busy (WAL recovery by another process).
    pub(crate) async fn read<R, F>(&self, f: F) -> act::Result<R>
    where
        R: Send + 'static,
        F: Fn(&Transaction) -> Result<R, Failure> + Send + 'static,
    {
        self.run(move |conn| {
            let deadline = Instant::now() + BUSY_PATIENCE;
            loop {
                let attempt = (|| -> Result<R, Failure> {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                    let r = f(&tx)?;
                    tx.finish()?;
                    Ok(r)
                })();
                match attempt {
                    Err(e) if e.is_busy() && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    fn stopped(&self) -> act::Error {
        act::Error::Store {
            store: self.store.to_string(),
            source: "the SQLite worker thread stopped".into(),
        }
    }
}
