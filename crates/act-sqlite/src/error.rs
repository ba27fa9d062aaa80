//! How SQLite failures become [`act::Error`]s, and the one place that knows
//! which SQLite codes mean "busy, try again".

use act::Error;
use rusqlite::ErrorCode;

/// A failure inside a job: SQLite's (maybe retryable) or act's own.
#[derive(Debug)]
pub(crate) enum Failure {
    Db(rusqlite::Error),
    Act(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Act(e)
    }
}

impl Failure {
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, Failure::Db(e) if is_busy(e))
    }

    pub(crate) fn into_act(self, store: &str) -> Error {
        match self {
            Failure::Db(e) => map(store, e),
            Failure::Act(e) => e,
        }
    }
}

/// True for "another connection holds the lock": worth retrying.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Maps a SQLite error to what a caller can act on.
pub(crate) fn map(store: &str, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Unavailable {
            store: store.to_string(),
            source: Box::new(e),
        },
        Some(ErrorCode::NotADatabase) => Error::Schema {
            store: store.to_string(),
            message: "the file is not a SQLite database; refusing to touch it".into(),
        },
        Some(ErrorCode::DatabaseCorrupt) => Error::Schema {
            store: store.to_string(),
            message: format!("the database file is corrupt ({e}); restore it from a backup"),
        },
        _ => Error::Store {
            store: store.to_string(),
            source: Box::new(e),
        },
    }
}
