//! The one error type of the core and of every store port.
//!
//! Variants are grouped by what a caller can do about them: retry later
//! ([`Error::Unavailable`]), reload and retry ([`Error::Concurrency`]), fix the
//! input ([`Error::Rejected`], [`Error::Decode`], [`Error::InvalidInput`]), or
//! fix the deployment ([`Error::Schema`], [`Error::UnknownStore`]). Backends map
//! their own failures onto these variants, so application code never matches on
//! a driver's error type.

use crate::event::ExpectedVersion;

/// Result alias used throughout act.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a driver or a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in act and its stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream's version was not the one the append expected. Nothing was
    /// appended; reload the state and retry the action.
    #[error(
        "concurrency conflict on stream `{stream}`: expected version {expected}, actual {actual}"
    )]
    Concurrency {
        /// The stream that was appended to.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// What the store holds.
        actual: ActualVersion,
    },

    /// An action broke an invariant of its state. Nothing was appended.
    #[error("action `{action}` on stream `{stream}` was rejected: {reason}")]
    Rejected {
        /// The stream the action targeted.
        stream: String,
        /// The action's name.
        action: String,
        /// Why the state refused it.
        reason: String,
    },

    /// Stored or supplied data could not be encoded or decoded (not JSON, or
    /// not the shape the type expects).
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded (an event id and name, a payload, a row).
        what: String,
        /// The decoder's message.
        reason: String,
    },

    /// An argument a caller supplied is not acceptable (the message says why).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// An operator command named a queue that does not exist.
    #[error("no queue named `{0}`")]
    UnknownQueue(String),

    /// An operator command named a reaction the store has never registered.
    #[error("no reaction named `{0}` is registered in this store")]
    UnknownReaction(String),

    /// A store URL with a scheme act does not know.
    #[error("unknown store URL `{url}`: supported schemes are {supported}")]
    UnknownStore {
        /// The URL as given (password redacted).
        url: String,
        /// The schemes this build supports, e.g. `memory:, sqlite://PATH`.
        supported: String,
    },

    /// The store cannot be reached or is busy; the operation may succeed if
    /// retried later. When the connection was lost while the call was in
    /// flight, the store may or may not have applied it: retry appends with
    /// an idempotency key (reactions' appends have one) so a retry cannot
    /// apply them twice.
    #[error("store `{store}` unavailable: {source}")]
    Unavailable {
        /// The store (URL with password redacted, or a file path).
        store: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// No act store exists at this address (no file, schema or key prefix),
    /// and the caller asked not to create one ([`crate::OpenMode::Existing`]
    /// or [`crate::OpenMode::ReadOnly`]).
    #[error("no act store at `{store}`: nothing has created it yet (commands that write, such as `act worker` or `act demo`, create it)")]
    Missing {
        /// The store (URL with password redacted, or a file path).
        store: String,
    },

    /// The store's schema is missing, foreign, corrupt or newer than this code.
    #[error("store `{store}` has an unusable schema: {message}")]
    Schema {
        /// The store (URL with password redacted, or a file path).
        store: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// Any other failure reported by a store's driver.
    #[error("store `{store}` failed: {source}")]
    Store {
        /// The store (URL with password redacted, or a file path).
        store: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The broker was shut down while the call was waiting.
    #[error("the broker is shut down")]
    Shutdown,
}

impl Error {
    /// True when retrying the same call later may succeed (store unreachable or
    /// busy). Concurrency conflicts are not included: they need a reload.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Builds a [`Error::Decode`] from anything displayable.
    pub fn decode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// The version a stream actually had when an append conflicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActualVersion {
    /// The stream has no events.
    None,
    /// The version of the stream's last event.
    At(i64),
}

impl From<Option<i64>> for ActualVersion {
    fn from(v: Option<i64>) -> Self {
        match v {
            Some(v) => ActualVersion::At(v),
            None => ActualVersion::None,
        }
    }
}

impl std::fmt::Display for ActualVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActualVersion::None => f.write_str("none (the stream is empty)"),
            ActualVersion::At(v) => write!(f, "{v}"),
        }
    }
}

/// Hides the password of a URL (`postgres://user:secret@host` →
/// `postgres://user:***@host`) so it can be printed in errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://bob:secret@db:5432/app?x=1"),
            "postgres://bob:***@db:5432/app?x=1"
        );
        assert_eq!(redact_url("postgres://bob@db/app"), "postgres://bob@db/app");
        assert_eq!(redact_url("sqlite://act.db"), "sqlite://act.db");
        assert_eq!(redact_url("memory:"), "memory:");
        assert_eq!(
            redact_url("redis://:pw@host:6379/0"),
            "redis://:***@host:6379/0"
        );
    }

    #[test]
    fn concurrency_error_names_both_versions() {
        let e = Error::Concurrency {
            stream: "account-1".into(),
            expected: ExpectedVersion::Exact(3),
            actual: ActualVersion::At(5),
        };
        assert_eq!(
            e.to_string(),
            "concurrency conflict on stream `account-1`: expected version 3, actual 5"
        );
    }
}
