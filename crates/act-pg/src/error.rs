//! How PostgreSQL and pool failures become [`act::Error`]s, which ones are
//! worth retrying inside one call (deadlocks, serialization failures), and
//! which ones leave a connection unfit to go back to the pool.
//!
//! Everything is decided by cause — the SQLSTATE, the severity, whether the
//! driver saw the connection close or an I/O error — never by message text.
//! [`Facts`] is what a driver error says about its cause; [`classify`] is
//! the one rule, a pure function with its own tests.

use act::Error;
use tokio_postgres::error::{Severity, SqlState};

/// What a driver error tells about its cause.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Facts {
    /// The server's SQLSTATE, when the server answered with an error.
    pub code: Option<SqlState>,
    /// The server ended the session with it (FATAL or PANIC).
    pub fatal: bool,
    /// The driver found the connection closed.
    pub closed: bool,
    /// An I/O error: the socket failed, was reset, timed out or could not
    /// connect.
    pub io: bool,
    /// A TLS failure: a certificate that did not verify, a handshake the
    /// server refused, a client certificate it did not accept.
    pub tls: bool,
}

impl Facts {
    /// Reads the facts of a driver error.
    pub(crate) fn of(e: &tokio_postgres::Error) -> Facts {
        let db = e.as_db_error();
        Facts {
            code: db.map(|d| d.code().clone()),
            fatal: db.is_some_and(|d| {
                matches!(d.parsed_severity(), Some(Severity::Fatal | Severity::Panic))
            }),
            closed: e.is_closed(),
            io: causes(e).any(|s| s.is::<std::io::Error>() && !is_tls(s)),
            tls: causes(e).any(is_tls),
        }
    }
}

/// The causes of `e`, nearest first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |s| s.source())
}

#[cfg(feature = "tls")]
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    crate::tls::is_tls_failure(e)
}

#[cfg(not(feature = "tls"))]
fn is_tls(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Class {
    /// The store is unreachable, restarting, read-only or busy: the same call
    /// may succeed later ([`Error::Unavailable`]).
    pub transient: bool,
    /// Another transaction got in the way: run the call again at once.
    pub retry: bool,
    /// The connection may be unusable or in a bad session state: drop it
    /// instead of returning it to the pool.
    pub discard: bool,
    /// The schema is missing or was changed by hand.
    pub schema: bool,
}

/// The one classification rule (see the module docs).
pub(crate) fn classify(f: &Facts) -> Class {
    let Some(code) = &f.code else {
        // No server error: the connection closed or failed (I/O, reset, timed
        // out, could not connect), or the driver could not encode, decode or
        // follow the protocol, or TLS failed (a certificate, a refused
        // handshake: a misconfiguration to fix, not to wait out). Only the
        // first is worth retrying later; in every case the connection goes.
        return Class {
            transient: (f.closed || f.io) && !f.tls,
            retry: false,
            discard: true,
            schema: false,
        };
    };
    let c = code.code();
    let retry =
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE;
    let session = c.starts_with("08") // connection exception
        || c.starts_with("57P") // admin / crash shutdown, cannot connect now, database dropped
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION // a replica, or a read-only primary
        || *code == SqlState::IN_FAILED_SQL_TRANSACTION
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || c.starts_with("58"); // system error (I/O on the server)
    let transient = retry
        || (session && *code != SqlState::IN_FAILED_SQL_TRANSACTION && *code != SqlState::DATABASE_DROPPED)
        || c.starts_with("53") // insufficient resources: too many connections, disk full, out of memory
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED;
    Class {
        transient,
        retry,
        discard: session || f.fatal || f.closed || f.io,
        schema: *code == SqlState::UNDEFINED_TABLE
            || *code == SqlState::INVALID_SCHEMA_NAME
            || *code == SqlState::UNDEFINED_FUNCTION,
    }
}

/// True when the server aborted the statement because of a conflict with
/// another transaction: running it again is safe and expected to succeed.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    classify(&Facts::of(e)).retry
}

/// True when the connection that returned `e` must not go back to the pool.
pub(crate) fn discards(e: &tokio_postgres::Error) -> bool {
    classify(&Facts::of(e)).discard
}

/// True when the failure is a unique violation of `constraint`.
pub(crate) fn violates(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::UNIQUE_VIOLATION && d.constraint() == Some(constraint)
    })
}

/// The failure is one of act's own codes (raised by its functions).
pub(crate) fn is_code(e: &tokio_postgres::Error, code: &str) -> bool {
    e.code().is_some_and(|c| c.code() == code)
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

/// A driver error told with all its causes ("error connecting to server:
/// Connection refused (os error 111)"): the driver's own Display names only
/// the outermost ("error connecting to server"). The causes are in the
/// text, so `source()` is empty (a reader walking the chain sees each once).
#[derive(Debug)]
struct Chain(String);

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Chain {}

/// `e` and its causes, joined with `: `; a cause whose text its parent
/// already shows (an I/O error shows the error it wraps) is not repeated.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    for cause in causes(e) {
        let told = cause.to_string();
        if !text.ends_with(&told) {
            text.push_str(": ");
            text.push_str(&told);
        }
    }
    text
}

fn explain(e: tokio_postgres::Error) -> act::BoxError {
    match e.as_db_error() {
        Some(db) => Box::new(ServerError {
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
        }),
        None => Box::new(Chain(chain(&e))),
    }
}

/// Maps a driver error to what a caller can act on.
pub(crate) fn map(store: &str, e: tokio_postgres::Error) -> Error {
    let class = classify(&Facts::of(&e));
    if class.transient {
        return Error::Unavailable {
            store: store.to_string(),
            source: explain(e),
        };
    }
    if class.schema {
        let message = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string());
        return Error::Schema {
            store: store.to_string(),
            message: format!("{message} (was the schema dropped or changed by hand?)"),
        };
    }
    Error::Store {
        store: store.to_string(),
        source: explain(e),
    }
}

/// Maps a pool failure (no connection could be had): a connection that
/// could not be made is classified like any driver error; a wait that timed
/// out or a closed pool is transient.
pub(crate) fn pool(store: &str, e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map(store, e),
        other => Error::Unavailable {
            store: store.to_string(),
            source: Box::new(Chain(chain(&other))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: SqlState) -> Facts {
        Facts {
            code: Some(code),
            ..Facts::default()
        }
    }

    #[test]
    fn lost_connections_are_transient_and_discarded() {
        for f in [
            Facts {
                closed: true,
                ..Facts::default()
            },
            Facts {
                io: true,
                ..Facts::default()
            },
        ] {
            let c = classify(&f);
            assert!(c.transient && c.discard && !c.retry, "{f:?}: {c:?}");
        }
    }

    #[test]
    fn driver_errors_without_a_cause_are_bugs_but_the_connection_still_goes() {
        let c = classify(&Facts::default());
        assert!(!c.transient && c.discard, "{c:?}");
    }

    #[test]
    fn a_read_only_or_stopping_server_is_transient_and_its_sessions_are_dropped() {
        for code in [
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            SqlState::IO_ERROR,
        ] {
            let c = classify(&server(code.clone()));
            assert!(c.transient && c.discard && !c.retry, "{code:?}: {c:?}");
        }
    }

    #[test]
    fn a_failed_transaction_drops_the_session_without_pretending_to_be_transient() {
        let c = classify(&server(SqlState::IN_FAILED_SQL_TRANSACTION));
        assert!(!c.transient && c.discard, "{c:?}");
        let c = classify(&server(SqlState::DATABASE_DROPPED));
        assert!(!c.transient && c.discard, "{c:?}");
    }

    #[test]
    fn conflicts_are_retried_and_keep_the_connection() {
        for code in [
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
        ] {
            let c = classify(&server(code.clone()));
            assert!(c.retry && c.transient && !c.discard, "{code:?}: {c:?}");
        }
    }

    #[test]
    fn a_busy_server_is_transient_and_keeps_the_connection() {
        for code in [
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::OUT_OF_MEMORY,
            SqlState::DISK_FULL,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
        ] {
            let c = classify(&server(code.clone()));
            assert!(c.transient && !c.discard && !c.retry, "{code:?}: {c:?}");
        }
    }

    #[test]
    fn a_fatal_error_ends_the_session() {
        let f = Facts {
            fatal: true,
            ..server(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        };
        let c = classify(&f);
        assert!(c.discard && !c.transient, "{c:?}");
    }

    #[test]
    fn missing_objects_are_schema_errors_and_bugs_are_store_errors() {
        for code in [
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::UNDEFINED_FUNCTION,
        ] {
            let c = classify(&server(code.clone()));
            assert!(c.schema && !c.transient && !c.discard, "{code:?}: {c:?}");
        }
        for code in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::RAISE_EXCEPTION,
        ] {
            let c = classify(&server(code.clone()));
            assert_eq!(
                c,
                Class {
                    transient: false,
                    retry: false,
                    discard: false,
                    schema: false
                },
                "{code:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error_and_unavailable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("postgres://postgres@127.0.0.1:{port}/x?connect_timeout=5");
        let e = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .err()
            .expect("nobody listens there");
        let f = Facts::of(&e);
        assert!(f.io && f.code.is_none() && !f.tls, "{f:?}");
        let e = map("s", e);
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert!(
            e.to_string().contains("Connection refused"),
            "the cause is shown: {e}"
        );
    }

    #[test]
    fn a_tls_failure_is_not_transient_even_over_io() {
        let f = Facts {
            io: true,
            tls: true,
            ..Facts::default()
        };
        let c = classify(&f);
        assert!(!c.transient && c.discard, "{c:?}");
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error connecting to server")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            chain(&e),
            "error connecting to server: invalid peer certificate: UnknownIssuer"
        );
    }
}
