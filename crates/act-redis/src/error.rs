//! How Redis failures become [`act::Error`]s, and the deployment problems
//! the store refuses to start with ([`ConfigError`]).

use act::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// A Redis deployment the store refuses to run on. Returned inside
/// [`act::Error::Store`] by `open`; downcast its source to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `maxmemory-policy` lets Redis delete keys when memory runs out, which
    /// would silently lose events, queues and leases.
    #[error(
        "maxmemory-policy is `{policy}`: Redis may evict act's keys when memory runs out and \
         silently lose events and queues; set `maxmemory-policy noeviction` (writes then fail \
         with an error instead when memory is full)"
    )]
    Eviction {
        /// The policy the server reported.
        policy: String,
    },
    /// `CONFIG GET maxmemory-policy` is not allowed (managed Redis, ACLs, a
    /// renamed command), so the store cannot check the policy itself.
    #[error(
        "cannot read maxmemory-policy ({reason}); if you know the server runs with \
         `maxmemory-policy noeviction`, add `assume_noeviction=true` to the URL"
    )]
    PolicyUnreadable {
        /// Why the policy could not be read.
        reason: String,
    },
}

/// Maps a Redis error to what a caller can act on: connection problems and
/// a busy or loading server are [`Error::Unavailable`] (retry later);
/// everything else is [`Error::Store`].
pub(crate) fn map(store: &str, e: RedisError) -> Error {
    if is_transient(&e) {
        Error::Unavailable {
            store: store.to_string(),
            source: Box::new(e),
        }
    } else {
        Error::Store {
            store: store.to_string(),
            source: Box::new(e),
        }
    }
}

fn is_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        // A script or module is running past its time limit.
        _ => e.code() == Some("BUSY"),
    }
}

/// A reply that does not have the shape the scripts promise: a store with
/// foreign data under the prefix, or a bug.
pub(crate) fn malformed(store: &str, what: impl std::fmt::Display) -> Error {
    Error::Store {
        store: store.to_string(),
        source: format!("unexpected reply from Redis: {what}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_failures_are_transient_and_server_errors_are_not() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            map("redis://:***@h/0", refused),
            Error::Unavailable { .. }
        ));
        let oom = RedisError::from((ErrorKind::Extension, "OOM", "command not allowed".into()));
        assert!(matches!(map("redis://h/0", oom), Error::Store { .. }));
    }
}
