//! How PostgreSQL and pool failures become [`act::Error`]s, and which ones
//! are worth retrying inside one call (deadlocks, serialization failures).

use act::Error;
use tokio_postgres::error::SqlState;

/// True when the server aborted the statement because of a conflict with
/// another transaction: running it again is safe and expected to succeed.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// True when the failure is a unique violation of `constraint`.
pub(crate) fn violates(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::UNIQUE_VIOLATION && d.constraint() == Some(constraint)
    })
}

/// A server error with its SQLSTATE and message (the driver's own Display
/// only says "db error").
#[derive(Debug)]
struct ServerError {
    code: String,
    message: String,
    detail: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

fn explain(e: tokio_postgres::Error) -> act::BoxError {
    match e.as_db_error() {
        Some(db) => Box::new(ServerError {
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
        }),
        None => Box::new(e),
    }
}

/// Maps a driver error to what a caller can act on.
pub(crate) fn map(store: &str, e: tokio_postgres::Error) -> Error {
    let unavailable = |e: tokio_postgres::Error| Error::Unavailable {
        store: store.to_string(),
        source: explain(e),
    };
    let Some(db) = e.as_db_error() else {
        // Not a server error: the connection is gone (I/O, closed, could not
        // connect, timed out), or a bug on our side (a parameter of the wrong
        // type), which retrying cannot fix.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        let text = e.to_string();
        if e.is_closed() || io || text.starts_with("error connecting") || text.contains("timeout") {
            return unavailable(e);
        }
        return Error::Store {
            store: store.to_string(),
            source: Box::new(e),
        };
    };
    let code = db.code().code();
    if code.starts_with("08")
        || code.starts_with("57P")
        || code == "53300"
        || code == "40P01"
        || code == "40001"
    {
        // connection exceptions, admin shutdown / crash recovery, too many
        // connections, deadlock, serialization: try again later
        return unavailable(e);
    }
    if *db.code() == SqlState::UNDEFINED_TABLE
        || *db.code() == SqlState::INVALID_SCHEMA_NAME
        || *db.code() == SqlState::UNDEFINED_FUNCTION
    {
        return Error::Schema {
            store: store.to_string(),
            message: format!(
                "{} (was the schema dropped or changed by hand?)",
                db.message()
            ),
        };
    }
    Error::Store {
        store: store.to_string(),
        source: explain(e),
    }
}

/// Maps a pool failure (no connection could be had).
pub(crate) fn pool(store: &str, e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map(store, e),
        other => Error::Unavailable {
            store: store.to_string(),
            source: Box::new(other),
        },
    }
}
