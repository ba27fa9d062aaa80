//! How SQLite failures become [`act::Error`]s, classified by SQLite's result
//! code (never by message text), and the one place that knows which codes
//! mean "busy, try again".
//!
//! | SQLite code | act error | why |
//! |---|---|---|
//! | `BUSY`, `LOCKED` | [`Error::Unavailable`] | another connection holds a lock; the lanes retry for 30 s first |
//! | `PROTOCOL` | [`Error::Unavailable`] | a WAL locking race between processes; retrying succeeds |
//! | `IOERR` (every extended code) | [`Error::Unavailable`] | the OS failed a read, write, fsync or lock (a network or USB disk hiccup, a remount): the transaction was rolled back and a later try may work |
//! | `FULL` | [`Error::Unavailable`] | the disk or quota is full: nothing was written; brokers back off and go on once an operator frees space |
//! | `READONLY` | [`Error::Unavailable`] | the file or its file system became read-only under a store opened for writing (a remount after errors, changed permissions): an outage, not a caller's mistake |
//! | `READONLY_DBMOVED` | [`Error::Store`] | the file was deleted or replaced under the store: reopening is needed, retrying is not enough |
//! | `CANTOPEN` | [`Error::Store`] | the file or its directory is missing or not accessible: not transient, the message says "cannot open" |
//! | `NOTADB` | [`Error::Schema`] | not a SQLite file: refused, never touched |
//! | `CORRUPT` | [`Error::Schema`] | restore from a backup |
//! | anything else | [`Error::Store`] | constraint, misuse, schema changes: a bug to report |
//!
//! A store opened [`act::OpenMode::ReadOnly`] refuses writes itself, with
//! [`Error::InvalidInput`], before SQLite sees them.

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

/// True for "another connection holds the lock": worth retrying at once.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn extended_code(e: &rusqlite::Error) -> Option<i32> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

/// Maps a SQLite error to what a caller can act on (see the module docs).
pub(crate) fn map(store: &str, e: rusqlite::Error) -> Error {
    let unavailable = |e: rusqlite::Error| Error::Unavailable {
        store: store.to_string(),
        source: Box::new(e),
    };
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull,
        ) => unavailable(e),
        Some(ErrorCode::ReadOnly)
            if extended_code(&e) != Some(rusqlite::ffi::SQLITE_READONLY_DBMOVED) =>
        {
            unavailable(e)
        }
        Some(ErrorCode::CannotOpen) => Error::Store {
            store: store.to_string(),
            source: format!("cannot open the database file: {e}").into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn code(extended: i32) -> Error {
        map(
            "sqlite://t.db",
            rusqlite::Error::SqliteFailure(ffi::Error::new(extended), None),
        )
    }

    fn transient(extended: i32) -> bool {
        code(extended).is_transient()
    }

    #[test]
    fn locks_are_transient() {
        assert!(transient(ffi::SQLITE_BUSY));
        assert!(transient(ffi::SQLITE_BUSY_SNAPSHOT));
        assert!(transient(ffi::SQLITE_LOCKED));
        assert!(transient(ffi::SQLITE_PROTOCOL));
        assert!(is_busy(&rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_BUSY),
            None
        )));
    }

    #[test]
    fn io_errors_are_transient() {
        for c in [
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_READ,
            ffi::SQLITE_IOERR_SHORT_READ,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_LOCK,
        ] {
            assert!(transient(c), "{c}");
        }
        // Retried by the caller's backoff, not by the lanes' busy loop.
        assert!(!is_busy(&rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_IOERR),
            None
        )));
    }

    #[test]
    fn a_full_disk_is_transient() {
        assert!(transient(ffi::SQLITE_FULL));
    }

    #[test]
    fn a_read_only_file_is_transient_unless_it_moved() {
        assert!(transient(ffi::SQLITE_READONLY));
        assert!(transient(ffi::SQLITE_READONLY_RECOVERY));
        assert!(matches!(
            code(ffi::SQLITE_READONLY_DBMOVED),
            Error::Store { .. }
        ));
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_not_transient() {
        let e = code(ffi::SQLITE_CANTOPEN);
        assert!(matches!(e, Error::Store { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot open"), "{e}");
    }

    #[test]
    fn foreign_and_corrupt_files_are_schema_errors() {
        let e = code(ffi::SQLITE_NOTADB);
        assert!(
            matches!(e, Error::Schema { .. }) && e.to_string().contains("not a SQLite database"),
            "{e}"
        );
        let e = code(ffi::SQLITE_CORRUPT);
        assert!(
            matches!(e, Error::Schema { .. }) && e.to_string().contains("corrupt"),
            "{e}"
        );
    }

    #[test]
    fn bugs_are_store_errors() {
        for c in [
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_MISUSE,
            ffi::SQLITE_ERROR,
        ] {
            let e = code(c);
            assert!(
                matches!(e, Error::Store { .. }) && !e.is_transient(),
                "{c}: {e:?}"
            );
        }
        let e = map("sqlite://t.db", rusqlite::Error::QueryReturnedNoRows);
        assert!(matches!(e, Error::Store { .. }));
    }
}
