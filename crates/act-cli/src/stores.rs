//! Opens a store from its URL.
//!
//! | URL | store |
//! |---|---|
//! | `memory:` | in memory, gone when the process ends |
//! | `sqlite://PATH` | not yet built |

use std::sync::Arc;

use act::{Error, MemoryStore, Store};

/// The store used when `--store` is not given.
pub const DEFAULT: &str = "memory:";

/// The schemes this build understands, for error messages.
pub const SUPPORTED: &str = "memory:";

/// Opens the store named by `url`.
pub async fn open(url: &str) -> act::Result<Arc<dyn Store>> {
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    Err(Error::UnknownStore {
        url: act::redact_url(url),
        supported: SUPPORTED.to_string(),
    })
}
