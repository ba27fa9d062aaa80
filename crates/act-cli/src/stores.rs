//! Opens a store from its URL.
//!
//! | URL | store |
//! |---|---|
//! | `sqlite://PATH` | SQLite file (created when missing); the default is `sqlite://act.db` |
//! | `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME&pool_size=N]` | PostgreSQL; tables in schema `NAME` (default `act`) |
//! | `redis://[:PASSWORD@]HOST[:PORT][/DB][?prefix=NAME]` | Redis (single node, `maxmemory-policy noeviction`); keys under `{NAME}:` (default `act`) |
//! | `memory:` | in memory, gone when the process ends |

use std::sync::Arc;

use act::{Error, MemoryStore, Store};

/// The store used when `--store` is not given.
pub const DEFAULT: &str = "sqlite://act.db";

/// The schemes this build understands, for error messages.
pub const SUPPORTED: &str =
    "sqlite://PATH, postgres://USER@HOST/DB[?schema=NAME], redis://HOST[:PORT][/DB][?prefix=NAME], memory:";

/// Opens the store named by `url`.
pub async fn open(url: &str) -> act::Result<Arc<dyn Store>> {
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("sqlite://") {
        return Ok(Arc::new(act_sqlite::SqliteStore::open_url(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(act_pg::PgStore::open(url).await?));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        // rediss:// is refused by act-redis with an explanation (no TLS built in).
        return Ok(Arc::new(act_redis::RedisStore::open(url).await?));
    }
    Err(Error::UnknownStore {
        url: act::redact_url(url),
        supported: SUPPORTED.to_string(),
    })
}
