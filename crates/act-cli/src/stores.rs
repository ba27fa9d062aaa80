//! Opens a store from its URL.
//!
//! | URL | store |
//! |---|---|
//! | `sqlite://PATH[?readers=N&busy_timeout_ms=N&watch_ms=N&queue_sync=normal\|full]` | SQLite file; the default is `sqlite://act.db` (docs/sqlite.md) |
//! | `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]` | PostgreSQL; tables in schema `schema=NAME` (default `act`); TLS with `sslmode`, `sslrootcert`, `sslcert`, `sslkey`; connection limits and timeouts (docs/postgres.md) |
//! | `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]`, `rediss://…` | Redis (single node, `maxmemory-policy noeviction`); keys under `{NAME}:` (`prefix=NAME`, default `act`); TLS with `tls_ca`, `tls_cert`, `tls_key` (docs/redis.md) |
//! | `memory:` | in memory, gone when the process ends |
//!
//! `act --help` lists every option; an unknown one is an error.
//!
//! Commands that only read open the store read-only ([`OpenMode::ReadOnly`]):
//! they never create it, migrate it or write to it, so they work against a
//! read-only database and a typo in a URL is an error, not a new empty store.
//! Operator commands that write open an existing store ([`OpenMode::Existing`]).

use std::sync::Arc;
use std::time::Duration;

use act::{Error, MemoryStore, OpenMode, Store};

/// The store used when `--store` is not given.
pub const DEFAULT: &str = "sqlite://act.db";

/// The schemes this build understands, for error messages.
pub const SUPPORTED: &str =
    "sqlite://PATH, postgres://USER@HOST/DB[?schema=NAME], redis://HOST[:PORT][/DB][?prefix=NAME] (rediss:// for TLS), memory:";

/// Opens the store named by `url`, creating it when missing.
pub async fn open(url: &str) -> act::Result<Arc<dyn Store>> {
    open_mode(url, OpenMode::Create).await
}

/// Opens the store named by `url` in `mode`.
pub async fn open_mode(url: &str, mode: OpenMode) -> act::Result<Arc<dyn Store>> {
    if url == "memory:" || url == "memory://" {
        if mode != OpenMode::Create {
            return Err(Error::Missing {
                store: "memory: (an in-memory store lives only inside the process that made it)"
                    .into(),
            });
        }
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("sqlite://") {
        return Ok(Arc::new(
            act_sqlite::SqliteStore::open_url_mode(url, mode).await?,
        ));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(act_pg::PgStore::open_mode(url, mode).await?));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Arc::new(act_redis::RedisStore::open_mode(url, mode).await?));
    }
    Err(Error::UnknownStore {
        url: act::redact_url(url),
        supported: SUPPORTED.to_string(),
    })
}

/// Opens the store for a long-running process: while the store is
/// unreachable (a restart, a network blip), keeps trying with capped
/// exponential backoff, logging each failure, until it opens, `patience`
/// runs out, or an error that waiting cannot fix (a bad URL, a foreign
/// schema) comes back.
pub async fn open_patiently(url: &str, patience: Duration) -> act::Result<Arc<dyn Store>> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match open(url).await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < deadline => {
                failures += 1;
                tracing::warn!(failures, retry_in_ms = pause.as_millis() as u64, error = %e,
                    "the store is unreachable; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}
