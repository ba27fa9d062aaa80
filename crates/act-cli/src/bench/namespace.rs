//! A fresh, throwaway namespace of a store for one workload: a new SQLite
//! file next to the one named, a new PostgreSQL schema, a new Redis prefix,
//! or a new in-memory store. Removed again when the workload is done.

use std::path::PathBuf;
use std::sync::Arc;

use act::{MemoryStore, Store};

use act_cli::Error;

enum Kind {
    Memory(Arc<MemoryStore>),
    Sqlite(PathBuf),
    Postgres(Arc<act_pg::PgStore>),
    Redis(Arc<act_redis::RedisStore>),
}

/// A store nobody else uses, and how to remove it.
pub struct Namespace {
    /// The URL of this namespace (what worker processes are given).
    pub url: String,
    /// The store.
    pub store: Arc<dyn Store>,
    kind: Kind,
}

/// Replaces (or adds) one query parameter of a URL.
fn with_param(url: &str, key: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .map(str::to_string)
        .collect();
    pairs.push(format!("{key}={value}"));
    format!("{base}?{}", pairs.join("&"))
}

impl Namespace {
    /// A fresh namespace of the store named by `base` (its scheme and
    /// location), tagged with `tag` for people reading the server.
    pub async fn fresh(base: &str, tag: &str) -> Result<Namespace, Error> {
        let id = format!("{tag}_{:08x}", fastrand::u32(..));
        if base == "memory:" || base == "memory://" {
            let m = Arc::new(MemoryStore::new());
            return Ok(Namespace {
                url: "memory:".into(),
                store: m.clone(),
                kind: Kind::Memory(m),
            });
        }
        if let Some(rest) = base.strip_prefix("sqlite://") {
            let named = PathBuf::from(rest.split('?').next().unwrap_or(rest));
            let dir = named
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from);
            let file = dir.join(format!("act-bench-{id}.db"));
            let url = format!("sqlite://{}", file.display());
            let store = act_sqlite::SqliteStore::open_url(&url).await?;
            return Ok(Namespace {
                url,
                store: Arc::new(store),
                kind: Kind::Sqlite(file),
            });
        }
        if base.starts_with("postgres://") || base.starts_with("postgresql://") {
            let url = with_param(base, "schema", &format!("act_bench_{id}"));
            let store = Arc::new(act_pg::PgStore::open(&url).await?);
            return Ok(Namespace {
                url,
                store: store.clone(),
                kind: Kind::Postgres(store),
            });
        }
        if base.starts_with("redis://") || base.starts_with("rediss://") {
            let url = with_param(base, "prefix", &format!("bench-{id}"));
            let store = Arc::new(act_redis::RedisStore::open(&url).await?);
            return Ok(Namespace {
                url,
                store: store.clone(),
                kind: Kind::Redis(store),
            });
        }
        Err(act::Error::UnknownStore {
            url: act::redact_url(base),
            supported: act_cli::stores::SUPPORTED.into(),
        }
        .into())
    }

    /// Another handle on the same namespace, as a second process would open
    /// it (the same handle for memory).
    pub async fn reopen(&self) -> Result<Arc<dyn Store>, Error> {
        Ok(match &self.kind {
            Kind::Memory(m) => m.clone(),
            _ => act_cli::stores::open(&self.url).await?,
        })
    }

    /// True when worker processes can share it (not memory).
    pub fn shared(&self) -> bool {
        !matches!(self.kind, Kind::Memory(_))
    }

    /// The backend's name for result rows.
    pub fn backend(&self) -> &'static str {
        match self.kind {
            Kind::Memory(_) => "memory",
            Kind::Sqlite(_) => "sqlite",
            Kind::Postgres(_) => "postgres",
            Kind::Redis(_) => "redis",
        }
    }

    /// The SQLite file, when it is one.
    pub fn sqlite_file(&self) -> Option<&PathBuf> {
        match &self.kind {
            Kind::Sqlite(f) => Some(f),
            _ => None,
        }
    }

    /// Removes the namespace and everything in it.
    pub async fn destroy(self) -> Result<(), Error> {
        let Namespace { store, kind, .. } = self;
        drop(store);
        match kind {
            Kind::Memory(_) => {}
            Kind::Sqlite(file) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut f = file.clone().into_os_string();
                    f.push(suffix);
                    let _ = std::fs::remove_file(f);
                }
            }
            Kind::Postgres(pg) => pg.drop_schema().await?,
            Kind::Redis(r) => {
                r.destroy().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn with_param_replaces_or_adds() {
        assert_eq!(
            super::with_param("postgres://h/db", "schema", "x"),
            "postgres://h/db?schema=x"
        );
        assert_eq!(
            super::with_param("postgres://h/db?schema=a&pool_size=4", "schema", "x"),
            "postgres://h/db?pool_size=4&schema=x"
        );
    }
}
