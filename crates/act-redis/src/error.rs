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

/// A `rediss://` URL that reached a plaintext Redis port: the TLS
/// handshake did not complete, and the port answered a plaintext `PING`
/// (see `plaintext.rs`). Not transient: retrying cannot cure it.
#[derive(Debug, thiserror::Error)]
#[error(
    "TLS handshake with {addr} did not complete within {waited:?}, and the port answers \
     plaintext Redis: it is not a TLS port (use redis:// for it, or the server's `tls-port`)"
)]
pub(crate) struct PlaintextPort {
    /// `host:port`.
    pub(crate) addr: String,
    /// How long the handshake was given (the connect timeout).
    pub(crate) waited: std::time::Duration,
}

/// A TLS handshake the client refused or the server refused: a wrong CA,
/// a certificate for another host name, a missing or unknown client
/// certificate. Not transient: retrying cannot cure it.
#[cfg(feature = "tls")]
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {source}; {hint}")]
pub(crate) struct TlsFailure {
    hint: &'static str,
    source: RedisError,
}

/// The rustls error inside a redis-rs I/O error, if any: redis-rs keeps
/// the `io::Error` tokio-rustls made, which wraps the `rustls::Error`.
#[cfg(feature = "tls")]
fn tls_cause(e: &RedisError) -> Option<&rustls::Error> {
    use std::error::Error as _;
    type Inner = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let inner: &Inner = e.source()?.downcast_ref::<Inner>()?;
    let inner: &(dyn std::error::Error + 'static) = &**inner;
    if let Some(t) = inner.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    inner
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

/// What to check for a handshake failure.
#[cfg(feature = "tls")]
fn tls_hint(t: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C};
    match t {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the server's certificate is not signed by a CA this client trusts: give its CA \
             with `tls_ca=PATH` (or, for tests only, `tls_insecure=true`)"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            "the server's certificate is for another host name: connect by a name the \
             certificate lists"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        rustls::Error::AlertReceived(A::CertificateRequired | A::HandshakeFailure) => {
            "the server requires a client certificate: add `tls_cert=PATH&tls_key=PATH`"
        }
        rustls::Error::AlertReceived(
            A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError,
        ) => "the server refused the client certificate: check `tls_cert` and `tls_key`",
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer in TLS: is this its TLS port?"
        }
        _ => "check the server's TLS settings and the URL's `tls_*` options",
    }
}

/// Maps a Redis error to what a caller can act on: a failure that retrying
/// later may cure is [`Error::Unavailable`] (see [`is_transient`]);
/// everything else, including a TLS handshake failure ([`TlsFailure`]) and
/// an `AUTH` refusal, is [`Error::Store`].
pub(crate) fn map(store: &str, e: RedisError) -> Error {
    #[cfg(feature = "tls")]
    if let Some(t) = tls_cause(&e) {
        let hint = tls_hint(t);
        return Error::Store {
            store: store.to_string(),
            source: Box::new(TlsFailure { hint, source: e }),
        };
    }
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

/// Transient causes, by [`ErrorKind`] and error code (never by message
/// text):
/// - [`ErrorKind::Io`]: refused, reset, broken or timed-out connections, a
///   DNS lookup that failed (TLS handshake failures are I/O errors to
///   redis-rs too, but [`map`] sorts them out first);
/// - [`ErrorKind::Parse`]: a reply cut short when the connection dropped
///   mid-reply (redis-rs reports an unexpected end of input as a parse
///   error). The store reads every reply as a raw [`redis::Value`], so a
///   parse error never comes from converting a complete reply;
/// - server codes `LOADING` (restarting from disk), `BUSY` (a script or
///   function is running past its time limit), `TRYAGAIN`, `CLUSTERDOWN`,
///   `MASTERDOWN` and `READONLY` (the URL reached a replica, e.g. the old
///   primary after a failover).
///
/// `NOSCRIPT` never reaches here: `redis::Script` loads the script and
/// retries.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Parse => true,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        // Codes redis-rs does not name: a script or function running past
        // its time limit.
        ErrorKind::Extension => e.code() == Some("BUSY"),
        _ => false,
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
    use std::io;

    fn server(reply: &[u8]) -> RedisError {
        match redis::parse_redis_value(reply) {
            Ok(v) => v.extract_error().expect_err("a server error reply"),
            Err(e) => e,
        }
    }

    fn unavailable(e: RedisError) -> bool {
        matches!(map("redis://:***@h/0", e), Error::Unavailable { .. })
    }

    #[test]
    fn connection_failures_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::NotConnected,
            io::ErrorKind::TimedOut,
            io::ErrorKind::Other,
        ] {
            assert!(
                unavailable(RedisError::from(io::Error::from(kind))),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_reply_cut_short_is_transient() {
        // What redis-rs's codec reports when the connection closes inside
        // a reply (issue 11): a parse error, not an I/O error.
        let cut = RedisError::from(redis::ParsingError::from(
            "Parse error at 12\nUnexpected end of input",
        ));
        assert_eq!(cut.kind(), ErrorKind::Parse);
        assert!(unavailable(cut));
    }

    #[test]
    fn a_busy_loading_or_demoted_server_is_transient() {
        for reply in [
            &b"-LOADING Redis is loading the dataset in memory\r\n"[..],
            b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n",
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            b"-CLUSTERDOWN The cluster is down\r\n",
            b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
            b"-READONLY You can't write against a read only replica.\r\n",
        ] {
            let e = server(reply);
            assert!(unavailable(e.clone()), "{e:?} ({:?})", e.kind());
        }
    }

    #[test]
    fn server_refusals_are_permanent() {
        for reply in [
            &b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"[..],
            b"-ERR Error running script (call to f_x): @user_script:1: bad\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b"-NOPERM this user has no permissions to run the 'eval' command\r\n",
            b"-BUSYKEY Target key name already exists.\r\n",
        ] {
            let e = server(reply);
            assert!(!unavailable(e.clone()), "{e:?} ({:?})", e.kind());
        }
        let client = RedisError::from((ErrorKind::Client, "empty command"));
        assert!(!unavailable(client));
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "bad password"));
        assert!(!unavailable(auth));
    }
}
