//! How a store is opened: [`RedisOptions`] and the `redis://` URL that
//! carries them.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::Error;

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "act";

/// How a store is opened.
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
    /// retry; see the docs).
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
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
            clock_offset: Arc::new(AtomicI64::new(0)),
        }
    }
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

/// Splits `redis://[user:password@]host[:port][/db][?options]` into the URL
/// the Redis client connects to and the store's options. Options: `prefix`
/// (default `act`), `assume_noeviction=true|false`, `timeout_ms`,
/// `connect_timeout_ms`; `protocol` is passed on to the client. `rediss://`
/// (TLS) is not built in.
pub fn parse_url(url: &str) -> act::Result<(String, RedisOptions)> {
    let shown = act::redact_url(url);
    if url.starts_with("rediss://") {
        return Err(Error::InvalidInput(format!(
            "`{shown}`: TLS (rediss://) is not built into act-redis; use redis:// over a trusted \
             network or a TLS tunnel"
        )));
    }
    if !url.starts_with("redis://") {
        return Err(Error::UnknownStore {
            url: shown,
            supported: "redis://HOST[:PORT][/DB][?prefix=NAME]".into(),
        });
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut options = RedisOptions::default();
    let mut passed: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let millis = || {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    Error::InvalidInput(format!(
                    "`{key}` in `{shown}` must be a whole number of milliseconds, got `{value}`"
                ))
                })
        };
        match key {
            "prefix" => {
                check_prefix(value)?;
                options.prefix = value.to_string();
            }
            "assume_noeviction" => {
                options.assume_noeviction = match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(Error::InvalidInput(format!(
                            "`assume_noeviction` in `{shown}` must be true or false, got `{value}`"
                        )))
                    }
                }
            }
            "timeout_ms" => options.response_timeout = millis()?.max(Duration::from_millis(1)),
            "connect_timeout_ms" => {
                options.connect_timeout = millis()?.max(Duration::from_millis(1))
            }
            "protocol" => passed.push(pair),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown option `{key}` in `{shown}`: known options are prefix, \
                     assume_noeviction, timeout_ms, connect_timeout_ms, protocol"
                )))
            }
        }
    }
    let client_url = if passed.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", passed.join("&"))
    };
    Ok((client_url, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_a_prefix_and_options() {
        let (u, o) = parse_url("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(
            (u.as_str(), o.prefix.as_str()),
            ("redis://127.0.0.1:6379/0", "act")
        );
        assert!(!o.assume_noeviction);
        let (u, o) = parse_url(
            "redis://:pw@h/2?prefix=my-app.v1&assume_noeviction=true&timeout_ms=250&protocol=resp3",
        )
        .unwrap();
        assert_eq!(u, "redis://:pw@h/2?protocol=resp3");
        assert_eq!(o.prefix, "my-app.v1");
        assert!(o.assume_noeviction);
        assert_eq!(o.response_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_urls_are_refused_with_the_password_hidden() {
        let e = parse_url("redis://:secret@h/0?prefix={x}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be 1 to 64"), "{e}");
        let e = parse_url("redis://:secret@h/0?prefx=x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown option `prefx`") && !e.contains("secret"),
            "{e}"
        );
        let e = parse_url("rediss://:secret@h/0").unwrap_err().to_string();
        assert!(e.contains("TLS") && !e.contains("secret"), "{e}");
        let e = parse_url("redis://h/0?timeout_ms=soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number"), "{e}");
        assert!(parse_url("postgres://h").is_err());
    }
}
