//! How a store is opened: the server a `redis://` or `rediss://` URL names
//! ([`RedisServer`]: address, credentials, database, TLS files, protocol)
//! and the store's options ([`RedisOptions`]). The URL is parsed by the
//! `url` crate; user, password and option values are percent-decoded.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::Error;

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "act";

/// The client name used when the URL names none (`CLIENT LIST` shows it).
pub const DEFAULT_CLIENT_NAME: &str = "act";

/// Every option a URL may carry, in the order the docs list them.
pub const KNOWN_OPTIONS: &[&str] = &[
    "prefix",
    "assume_noeviction",
    "timeout_ms",
    "connect_timeout_ms",
    "keepalive_s",
    "client_name",
    "protocol",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_insecure",
];

/// How a store behaves and how long it waits.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Every key lives under `{prefix}:` (the braces are a Redis Cluster hash
    /// tag: all of a store's keys hash to one slot). Stores with different
    /// prefixes share a server without seeing each other. Letters, digits and
    /// `_ - . :` only.
    pub prefix: String,
    /// Open even when `CONFIG GET maxmemory-policy` is not allowed (managed
    /// Redis), trusting that the server runs with `noeviction`. A policy the
    /// server does report is always checked.
    pub assume_noeviction: bool,
    /// How long one call waits for Redis before failing with
    /// [`act::Error::Unavailable`]. A call that timed out may still have been
    /// applied by the server (appends with an idempotency key are safe to
    /// retry; see the docs). Default 10 s.
    pub response_timeout: Duration,
    /// How long connecting (TCP, TLS handshake, `AUTH`, `SELECT`) may take.
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// TCP keepalive: idle time before the first probe, so a server that
    /// vanished without closing the connection (a dead host, a dropped NAT
    /// entry) is noticed on an idle connection. `None` leaves the system
    /// default (off on Linux). Default 60 s.
    pub keepalive: Option<Duration>,
    /// Sent with `CLIENT SETNAME` on the store's connection, so operators
    /// see act's connections in `CLIENT LIST`; after a reconnect, again on
    /// the new connection before the store's next call. The wake-up
    /// listener's pub/sub connection has no name (redis-rs sends only
    /// `SUBSCRIBE` and `PING` on it); every connection reports
    /// `lib-name=act`. Printable ASCII without spaces. Default `act`.
    pub client_name: String,
    /// Test-only: microseconds added to the Redis server's `TIME` before
    /// every use (lease expiry, retry times, `created`). 0 in production;
    /// the conformance kit moves it forward instead of sleeping. Stores
    /// opened with the same `Arc` share the offset.
    pub clock_offset: Arc<AtomicI64>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            assume_noeviction: false,
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(60)),
            client_name: DEFAULT_CLIENT_NAME.to_string(),
            clock_offset: Arc::new(AtomicI64::new(0)),
        }
    }
}

/// The server a URL names and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisServer {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// Default 6379.
    pub port: u16,
    /// The database (`SELECT`), from the URL's path. Default 0.
    pub db: i64,
    /// `AUTH` user (Redis 6 ACLs); `None` is the default user.
    pub username: Option<String>,
    /// `AUTH` password. Never shown by `Debug`.
    pub password: Option<String>,
    /// RESP3 instead of RESP2 (`protocol=resp3`).
    pub resp3: bool,
    /// `Some` for `rediss://`.
    pub tls: Option<TlsOptions>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("resp3", &self.resp3)
            .field("tls", &self.tls)
            .finish()
    }
}

/// How a `rediss://` connection is verified and authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates the server's certificate must chain
    /// to (`tls_ca`): they replace the built-in Mozilla roots, which are
    /// then not trusted (as with `redis-cli --cacert`).
    pub ca: Option<PathBuf>,
    /// PEM files of the client certificate (chain) and its private key, for
    /// servers that require one (`tls_cert`, `tls_key`).
    pub client: Option<(PathBuf, PathBuf)>,
    /// No verification of the server's certificate at all: anyone on the
    /// path can read and change the traffic (`tls_insecure=true`).
    pub insecure: bool,
}

/// Checks a key prefix: 1–64 characters among letters, digits, `_ - . :`.
pub fn check_prefix(prefix: &str) -> act::Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "Redis key prefix `{prefix}` must be 1 to 64 letters, digits, `_`, `-`, `.` or `:`"
        )))
    }
}

/// Checks a client name: 1–64 printable ASCII characters, no spaces (what
/// `CLIENT SETNAME` accepts).
pub fn check_client_name(name: &str) -> act::Result<()> {
    if !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "Redis client name `{name}` must be 1 to 64 printable characters without spaces"
        )))
    }
}

/// A URL fit for messages: the password (everything between the first `:`
/// of the user part and the last `@` before the query) is `***`, even when
/// it holds characters a URL reserves.
pub fn shown_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let end = url[start..].find('?').map_or(url.len(), |i| start + i);
    let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

/// Parses `redis://[[user]:password@]host[:port][/db][?options]` or
/// `rediss://…` (TLS) into the server and the store's options. User,
/// password and option values are percent-decoded (`%40` for `@`, `%2F`
/// for `/`, `%25` for `%`, `%20` for a space; `+` stays a plus). Options
/// (each at most once):
///
/// | Option | Default | Meaning |
/// |---|---|---|
/// | `prefix=NAME` | `act` | key prefix ([`check_prefix`]) |
/// | `assume_noeviction=true` | `false` | open when `CONFIG GET` is refused |
/// | `timeout_ms=N` | 10000 | response timeout of one call |
/// | `connect_timeout_ms=N` | 5000 | connect + TLS handshake + `AUTH` |
/// | `keepalive_s=N` | 60 | TCP keepalive idle time; 0 = system default (off) |
/// | `client_name=NAME` | `act` | `CLIENT SETNAME` |
/// | `protocol=resp2\|resp3` | `resp2` | wire protocol |
/// | `tls_ca=PATH` | Mozilla roots | CA file (PEM), replacing the Mozilla roots; `rediss://` only |
/// | `tls_cert=PATH`, `tls_key=PATH` | none | client certificate and key (both or neither) |
/// | `tls_insecure=true` | `false` | no certificate verification at all |
///
/// Errors ([`Error::InvalidInput`], [`Error::UnknownStore`]) name the bad
/// part and show the URL with its password as `***`.
pub fn parse_url(url: &str) -> act::Result<(RedisServer, RedisOptions)> {
    let shown = shown_url(url);
    let bad = |what: String| Error::InvalidInput(format!("`{shown}`: {what}"));
    let tls = if url.starts_with("rediss://") {
        true
    } else if url.starts_with("redis://") {
        false
    } else {
        return Err(Error::UnknownStore {
            url: shown,
            supported: "redis://HOST[:PORT][/DB][?OPTIONS], rediss://… (TLS)".into(),
        });
    };
    let parsed = url::Url::parse(url).map_err(|e| {
        bad(format!(
            "not a URL ({e}); percent-encode `@`, `/`, `:`, `?`, `#` and `%` in the user and password"
        ))
    })?;
    if parsed.fragment().is_some() {
        return Err(bad(
            "a `#` fragment is not an option (for no certificate verification use \
             `?tls_insecure=true`; a `#` in a password is written `%23`)"
                .into(),
        ));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => return Err(bad("no host: use redis://HOST[:PORT][/DB]".into())),
    };
    let decode = |what: &str, s: &str| -> act::Result<Option<String>> {
        let d = percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map_err(|_| bad(format!("the {what} is not UTF-8 once percent-decoded")))?;
        Ok((!d.is_empty()).then(|| d.into_owned()))
    };
    let username = decode("user", parsed.username())?;
    let password = decode("password", parsed.password().unwrap_or(""))?;
    let db = match parsed.path().trim_start_matches('/') {
        "" => 0,
        p => p.parse::<u32>().map_err(|_| {
            bad(format!(
                "the database `/{p}` must be a number (`/0`, `/1`, …)"
            ))
        })? as i64,
    };
    let mut server = RedisServer {
        host,
        port: parsed.port().unwrap_or(6379),
        db,
        username,
        password,
        resp3: false,
        tls: tls.then(TlsOptions::default),
    };
    let mut options = RedisOptions::default();
    let (mut cert, mut key) = (None, None);
    let mut seen: Vec<String> = Vec::new();
    for pair in parsed
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key_name = decode("option name", raw_key)?.unwrap_or_default();
        let value = decode("option value", raw_value)?.unwrap_or_default();
        if !KNOWN_OPTIONS.contains(&key_name.as_str()) {
            return Err(bad(format!(
                "unknown option `{key_name}`; known options are {}",
                KNOWN_OPTIONS.join(", ")
            )));
        }
        if seen.contains(&key_name) {
            return Err(bad(format!("option `{key_name}` is given twice")));
        }
        seen.push(key_name.clone());
        let k = key_name.as_str();
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| bad(format!("`{k}` must be a whole number, got `{value}`")))
        };
        let millis = || number().map(|n| Duration::from_millis(n.max(1)));
        let flag = || match value.as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(bad(format!("`{k}` must be true or false, got `{value}`"))),
        };
        let path = || {
            if value.is_empty() {
                Err(bad(format!("`{k}` names no file")))
            } else {
                Ok(PathBuf::from(&value))
            }
        };
        let needs_tls = || {
            bad(format!(
                "`{k}` needs a TLS connection: use rediss:// instead of redis://"
            ))
        };
        match k {
            "prefix" => {
                check_prefix(&value).map_err(|e| bad(format!("`prefix`: {}", strip(e))))?;
                options.prefix = value.clone();
            }
            "assume_noeviction" => options.assume_noeviction = flag()?,
            "timeout_ms" => options.response_timeout = millis()?,
            "connect_timeout_ms" => options.connect_timeout = millis()?,
            "keepalive_s" => {
                options.keepalive = match number()? {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                }
            }
            "client_name" => {
                check_client_name(&value)
                    .map_err(|e| bad(format!("`client_name`: {}", strip(e))))?;
                options.client_name = value.clone();
            }
            "protocol" => {
                server.resp3 = match value.as_str() {
                    "resp2" | "2" => false,
                    "resp3" | "3" => true,
                    _ => {
                        return Err(bad(format!(
                            "`protocol` must be resp2 or resp3, got `{value}`"
                        )))
                    }
                }
            }
            "tls_ca" => {
                let p = path()?;
                server.tls.as_mut().ok_or_else(needs_tls)?.ca = Some(p);
            }
            "tls_cert" => {
                server.tls.as_mut().ok_or_else(needs_tls)?;
                cert = Some(path()?);
            }
            "tls_key" => {
                server.tls.as_mut().ok_or_else(needs_tls)?;
                key = Some(path()?);
            }
            "tls_insecure" => {
                let on = flag()?;
                server.tls.as_mut().ok_or_else(needs_tls)?.insecure = on;
            }
            _ => unreachable!("every known option is handled"),
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) => {
            if let Some(t) = server.tls.as_mut() {
                t.client = Some((c, k));
            }
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(bad(
                "`tls_cert` needs `tls_key` (the client certificate's private key)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                "`tls_key` needs `tls_cert` (the client certificate it belongs to)".into(),
            ))
        }
    }
    Ok((server, options))
}

/// The message of an `InvalidInput` without its `invalid input: ` prefix.
fn strip(e: Error) -> String {
    match e {
        Error::InvalidInput(m) => m,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse_url(url).unwrap_err().to_string()
    }

    #[test]
    fn urls_carry_a_server_a_prefix_and_options() {
        let (s, o) = parse_url("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("127.0.0.1", 6379, 0));
        assert_eq!((s.username, s.password, s.tls), (None, None, None));
        assert_eq!(o.prefix, "act");
        assert_eq!(o.client_name, "act");
        assert_eq!(o.keepalive, Some(Duration::from_secs(60)));
        assert!(!o.assume_noeviction);
        let (s, o) = parse_url(
            "redis://:pw@h/2?prefix=my-app.v1&assume_noeviction=true&timeout_ms=250\
             &connect_timeout_ms=100&keepalive_s=0&client_name=billing-worker&protocol=resp3",
        )
        .unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("h", 6379, 2));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert!(s.resp3);
        assert_eq!(o.prefix, "my-app.v1");
        assert!(o.assume_noeviction);
        assert_eq!(o.response_timeout, Duration::from_millis(250));
        assert_eq!(o.connect_timeout, Duration::from_millis(100));
        assert_eq!(o.keepalive, None);
        assert_eq!(o.client_name, "billing-worker");
        let (s, _) = parse_url("redis://[::1]:7000").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("::1", 7000, 0));
    }

    #[test]
    fn tls_urls_carry_files_and_the_insecure_switch() {
        let (s, _) = parse_url(
            "rediss://u:p@cache.example.com:6380/1?tls_ca=/etc/ca%20files/ca.pem\
             &tls_cert=c+1.pem&tls_key=k.pem",
        )
        .unwrap();
        let t = s.tls.unwrap();
        assert_eq!(t.ca, Some(PathBuf::from("/etc/ca files/ca.pem")));
        assert_eq!(
            t.client,
            Some((PathBuf::from("c+1.pem"), PathBuf::from("k.pem")))
        );
        assert!(!t.insecure);
        let (s, _) = parse_url("rediss://h?tls_insecure=true").unwrap();
        assert!(s.tls.unwrap().insecure);
    }

    #[test]
    fn user_and_password_are_percent_decoded() {
        let (s, _) = parse_url("redis://app%2Dbot:p%40ss%2Fw%25rd%3A%23@h:1/0").unwrap();
        assert_eq!(s.username.as_deref(), Some("app-bot"));
        assert_eq!(s.password.as_deref(), Some("p@ss/w%rd:#"));
        assert!(!format!("{s:?}").contains("p@ss"), "{s:?}");
    }

    #[test]
    fn each_bad_option_is_named() {
        for (url, says) in [
            (
                "redis://h/0?prefix={x}",
                "`prefix`: Redis key prefix `{x}` must be 1 to 64",
            ),
            (
                "redis://h/0?assume_noeviction=maybe",
                "`assume_noeviction` must be true or false",
            ),
            (
                "redis://h/0?timeout_ms=soon",
                "`timeout_ms` must be a whole number, got `soon`",
            ),
            (
                "redis://h/0?connect_timeout_ms=-1",
                "`connect_timeout_ms` must be a whole number",
            ),
            (
                "redis://h/0?keepalive_s=1m",
                "`keepalive_s` must be a whole number",
            ),
            (
                "redis://h/0?client_name=a%20b",
                "`client_name`: Redis client name `a b` must be",
            ),
            (
                "redis://h/0?protocol=resp4",
                "`protocol` must be resp2 or resp3",
            ),
            (
                "redis://h/0?tls_ca=ca.pem",
                "`tls_ca` needs a TLS connection: use rediss://",
            ),
            (
                "redis://h/0?tls_insecure=true",
                "`tls_insecure` needs a TLS connection",
            ),
            (
                "rediss://h/0?tls_insecure=sure",
                "`tls_insecure` must be true or false",
            ),
            ("rediss://h/0?tls_ca=", "`tls_ca` names no file"),
            ("rediss://h/0?tls_cert=c.pem", "`tls_cert` needs `tls_key`"),
            ("rediss://h/0?tls_key=k.pem", "`tls_key` needs `tls_cert`"),
            ("redis://h/zero", "the database `/zero` must be a number"),
            (
                "redis://h/0?prefix=a&prefix=b",
                "option `prefix` is given twice",
            ),
            ("rediss://h/0#insecure", "use `?tls_insecure=true`"),
            ("redis:///0", "no host"),
            (
                "redis://h/0?prefx=x",
                "unknown option `prefx`; known options are prefix, assume_noeviction, timeout_ms, \
                 connect_timeout_ms, keepalive_s, client_name, protocol, tls_ca, tls_cert, \
                 tls_key, tls_insecure",
            ),
        ] {
            let e = err(url);
            assert!(e.contains(says), "{url}: {e}");
        }
        assert!(matches!(
            parse_url("postgres://h"),
            Err(Error::UnknownStore { .. })
        ));
    }

    #[test]
    fn the_password_is_never_shown() {
        for url in [
            "redis://:secret@h/0?prefx=x",
            "rediss://u:secret@h/0?tls_cert=c.pem",
            "redis://:se@cr#et@h/0",
            "redis://u:sec/ret@h/0?timeout_ms=x",
            "redis://:s%40cret@h/0?prefix=%7B",
        ] {
            let e = err(url);
            assert!(
                !e.contains("secret") && !e.contains("cr#et") && !e.contains("s%40"),
                "{e}"
            );
            assert!(e.contains("***"), "{e}");
        }
    }
}
