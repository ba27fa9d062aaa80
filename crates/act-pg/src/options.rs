//! How a store is opened: [`PgOptions`], and [`parse_url`], the one parser
//! of act's PostgreSQL URLs (the `url` crate, libpq's option names).
//!
//! Every option is checked here, with an error that names the option and
//! the value (never the password); an unknown option is an error listing
//! the known ones. The connection settings ([`PgOptions::apply`]) are
//! written onto the driver's configuration when the store opens, so a
//! store opened with [`crate::PgStore::open_with`] gets them too.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use act::{Error, OpenMode};
use percent_encoding::percent_decode_str;

/// Whether and how connections use TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, plaintext otherwise (the default).
    /// The server is not verified unless a root certificate is given.
    Prefer,
    /// TLS or no connection. The server is not verified unless a root
    /// certificate is given (then as `VerifyCa`).
    Require,
    /// TLS, and the server's certificate chains to a trusted root; the host
    /// name is not checked.
    VerifyCa,
    /// TLS, a trusted chain, and a certificate for the host connected to.
    VerifyFull,
}

impl SslMode {
    const NAMES: &'static str = "disable, prefer, require, verify-ca, verify-full";

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// TLS settings (URL options `sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// See [`SslMode`]; default [`SslMode::Prefer`].
    pub mode: SslMode,
    /// PEM file of the CA certificate(s) to trust: then the only roots
    /// trusted, replacing the system's trust store (as libpq does). `None`
    /// (or the path `system`) uses the system's trust store when verifying.
    pub root_cert: Option<PathBuf>,
    /// PEM file of the client certificate, offered when the server asks.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The PostgreSQL schema holding act's tables (created when missing,
    /// if `mode` allows).
    pub schema: String,
    /// Create, open an existing store, or open it read-only.
    pub mode: OpenMode,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a call waits for a free connection.
    pub pool_timeout: Duration,
    /// Listen for commits by other processes (`LISTEN/NOTIFY`).
    pub listen: bool,
    /// TLS on every connection (the pool's and the LISTEN one).
    pub tls: TlsOptions,
    /// How long opening one connection may take (TCP, TLS, authentication).
    pub connect_timeout: Duration,
    /// TCP keepalives, so a dead peer behind a silent network is noticed.
    pub keepalives: bool,
    /// Idle time before the first keepalive probe.
    pub keepalives_idle: Duration,
    /// The longest any of act's statements may run (`statement_timeout` of
    /// its sessions); zero for none. Migrations lift it for themselves.
    pub statement_timeout: Duration,
    /// The longest one of act's sessions may sit idle inside a transaction
    /// before the server ends it; zero for none.
    pub idle_in_transaction_session_timeout: Duration,
    /// The name act's sessions show in `pg_stat_activity`.
    pub application_name: String,
    /// Added to the database clock, in microseconds. Zero in production;
    /// tests move it forward instead of sleeping. Shared by clones.
    pub clock_offset: Arc<AtomicI64>,
    /// Test-only negative control: ids from a plain sequence and readers
    /// without the visibility bound, as a naive store would do.
    #[cfg(feature = "test-hooks")]
    pub naive_ids: bool,
    /// Test-only: each append sleeps a random time up to this before it
    /// commits, so commits land out of id order.
    #[cfg(feature = "test-hooks")]
    pub commit_delay_ms: i32,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "act".into(),
            mode: OpenMode::Create,
            pool_size: 16,
            pool_timeout: Duration::from_secs(30),
            listen: true,
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(10),
            keepalives: true,
            keepalives_idle: Duration::from_secs(60),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_session_timeout: Duration::from_secs(60),
            application_name: "act".into(),
            clock_offset: Arc::default(),
            #[cfg(feature = "test-hooks")]
            naive_ids: false,
            #[cfg(feature = "test-hooks")]
            commit_delay_ms: 0,
        }
    }
}

impl PgOptions {
    /// Sets the name act's sessions show in `pg_stat_activity` (a broker
    /// passes its owner name, so an operator sees who holds a connection).
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Writes the connection settings onto the driver's configuration: TLS
    /// mode, connect timeout, keepalives, application name, and the session
    /// settings in the startup `options` (after any the config already has,
    /// so these win).
    pub(crate) fn apply(&self, config: &mut tokio_postgres::Config) {
        config
            .ssl_mode(self.tls.mode.driver())
            .connect_timeout(self.connect_timeout)
            .keepalives(self.keepalives)
            .keepalives_idle(self.keepalives_idle)
            .application_name(&self.application_name);
        let mut session = config.get_options().unwrap_or_default().to_string();
        for (name, value) in [
            ("statement_timeout", self.statement_timeout),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_session_timeout,
            ),
        ] {
            session.push_str(&format!(" -c {name}={}", value.as_millis()));
        }
        if self.mode == OpenMode::ReadOnly {
            // Belt and braces: the server refuses what the store would not do.
            session.push_str(" -c default_transaction_read_only=on");
        }
        config.options(session.trim());
    }
}

/// Every option a URL may carry, in the order the docs list them.
pub const KNOWN_OPTIONS: &[&str] = &[
    "schema",
    "pool_size",
    "listen",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "application_name",
    "options",
];

/// Splits `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]` (or
/// `postgresql://…`) into the driver's configuration (host, port, user,
/// password, database) and act's options. User, password, database and
/// option values are percent-decoded (write `@` as `%40`, `/` as `%2F`, `%`
/// as `%25`; `+` stays `+`). The options and their defaults are listed in
/// the crate docs; a bad value or an unknown option is
/// [`Error::InvalidInput`] naming it, with the password redacted.
///
/// ```
/// let (config, options) = act_pg::parse_url(
///     "postgres://app:p%40ss@db.internal:5433/prod?schema=shop&sslmode=verify-full",
/// )?;
/// assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
/// assert_eq!(options.schema, "shop");
/// # Ok::<(), act::Error>(())
/// ```
pub fn parse_url(url: &str) -> act::Result<(tokio_postgres::Config, PgOptions)> {
    let shown = act::redact_url(url);
    let invalid = |m: String| Error::InvalidInput(format!("PostgreSQL URL `{shown}`: {m}"));
    let parsed = url::Url::parse(url).map_err(|e| {
        invalid(format!(
            "{e} (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS])"
        ))
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(format!(
            "scheme `{}:` is not postgres: or postgresql:",
            parsed.scheme()
        )));
    }
    let decode = |what: &str, raw: &str| -> act::Result<String> {
        percent_decode_str(raw)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| invalid(format!("the {what} is not UTF-8 once percent-decoded")))
    };
    let mut config = tokio_postgres::Config::new();
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => decode("host", d)?,
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => String::new(),
    };
    if host.is_empty() {
        return Err(invalid("no host (postgres://USER@HOST/DB)".into()));
    }
    config.host(&host);
    if let Some(port) = parsed.port() {
        config.port(port);
    }
    let user = decode("user", parsed.username())?;
    if user.is_empty() {
        return Err(invalid("no user (postgres://USER@HOST/DB)".into()));
    }
    config.user(&user);
    if let Some(password) = parsed.password() {
        config.password(decode("password", password)?);
    }
    let db = decode("database", parsed.path().trim_start_matches('/'))?;
    if db.is_empty() || db.contains('/') {
        return Err(invalid(format!(
            "the path names no database, or more than one segment (`/{db}`): postgres://USER@HOST/DB"
        )));
    }
    config.dbname(&db);

    let mut options = PgOptions::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in parsed
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode("option name", key)?;
        let value = decode(&format!("value of {key}"), raw)?;
        if seen.contains(&key) {
            // Which one would win is a guess a typo should not rely on.
            return Err(invalid(format!("option `{key}` is given twice")));
        }
        seen.push(key.clone());
        let bad = |expected: &str| invalid(format!("{key}={value}: expected {expected}"));
        let seconds = |max: u64| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .map(Duration::from_secs)
                .ok_or_else(|| bad(&format!("whole seconds, 0–{max}")))
        };
        let millis = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= i32::MAX as u64)
                .map(Duration::from_millis)
                .ok_or_else(|| bad("milliseconds, 0 for none"))
        };
        let flag = || match value.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad("true or false (or 1 or 0)")),
        };
        let path = || {
            if value.is_empty() {
                Err(bad("a file path"))
            } else {
                Ok(Some(PathBuf::from(&value)))
            }
        };
        match key.as_str() {
            "schema" => options.schema = value.clone(),
            "pool_size" => {
                options.pool_size = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad("a number of connections, 1–1000"))?
            }
            "listen" => options.listen = flag()?,
            "sslmode" => {
                options.tls.mode = SslMode::parse(&value)
                    .ok_or_else(|| bad(&format!("one of {}", SslMode::NAMES)))?
            }
            "sslrootcert" => options.tls.root_cert = path()?,
            "sslcert" => options.tls.cert = path()?,
            "sslkey" => options.tls.key = path()?,
            "connect_timeout" => {
                options.connect_timeout = seconds(3600)?;
                if options.connect_timeout.is_zero() {
                    return Err(bad("whole seconds, 1–3600"));
                }
            }
            "keepalives" => options.keepalives = flag()?,
            "keepalives_idle" => {
                options.keepalives_idle = seconds(86_400)?;
                if options.keepalives_idle.is_zero() {
                    return Err(bad("whole seconds, 1–86400"));
                }
            }
            "statement_timeout" => options.statement_timeout = millis()?,
            "idle_in_transaction_session_timeout" => {
                options.idle_in_transaction_session_timeout = millis()?
            }
            // Passed to the server as they are; act's session settings
            // come after them (and win).
            "options" => {
                config.options(&value);
            }
            "application_name" => {
                if value.len() > 63 || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                    return Err(bad("at most 63 printable ASCII characters"));
                }
                options.application_name = value.clone()
            }
            _ => {
                return Err(invalid(format!(
                    "unknown option `{key}`; known options: {}",
                    KNOWN_OPTIONS.join(", ")
                )))
            }
        }
    }
    #[cfg(not(feature = "tls"))]
    if options.tls.mode != SslMode::Disable && options.tls.mode != SslMode::Prefer {
        return Err(invalid(format!(
            "sslmode={:?} needs act-pg's `tls` feature, which this build lacks",
            options.tls.mode
        )));
    }
    crate::schema::validate(&options.schema)?;
    Ok((config, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        parse_url(url).unwrap_err().to_string()
    }

    #[test]
    fn urls_split_into_driver_config_and_options() {
        let (c, o) =
            parse_url("postgres://bob:pw@db:5433/app?schema=shop&pool_size=4&connect_timeout=3")
                .unwrap();
        assert_eq!((o.schema.as_str(), o.pool_size), ("shop", 4));
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_user(), Some("bob"));
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        let (c, o) = parse_url("postgresql://bob@[::1]/app").unwrap();
        assert_eq!(o.schema, "act");
        assert_eq!(
            c.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("::1".into())]
        );
        assert!(
            !parse_url("postgres://u@db/app?listen=false")
                .unwrap()
                .1
                .listen
        );
        assert!(parse_url("postgres://u@db/app?listen=1").unwrap().1.listen);
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let (_, o) = parse_url("postgres://u@db/app").unwrap();
        assert_eq!(o.tls, TlsOptions::default());
        assert_eq!(o.tls.mode, SslMode::Prefer);
        assert_eq!(o.connect_timeout, Duration::from_secs(10));
        assert!(o.keepalives);
        assert_eq!(o.keepalives_idle, Duration::from_secs(60));
        assert_eq!(o.statement_timeout, Duration::from_millis(30_000));
        assert_eq!(
            o.idle_in_transaction_session_timeout,
            Duration::from_millis(60_000)
        );
        assert_eq!(o.application_name, "act");
        assert_eq!((o.pool_size, o.listen), (16, true));
    }

    #[test]
    fn every_option_is_read() {
        let (_, o) = parse_url(
            "postgres://u@db/app?sslmode=verify-full&sslrootcert=/etc/ca%20bundle.pem&sslcert=/c.pem\
             &sslkey=/k+1.pem&keepalives=0&keepalives_idle=5&statement_timeout=0\
             &idle_in_transaction_session_timeout=1500&application_name=worker%20a",
        )
        .unwrap();
        assert_eq!(o.tls.mode, SslMode::VerifyFull);
        assert_eq!(o.tls.root_cert, Some(PathBuf::from("/etc/ca bundle.pem")));
        assert_eq!(o.tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(
            o.tls.key,
            Some(PathBuf::from("/k+1.pem")),
            "+ is not a space"
        );
        assert!(!o.keepalives);
        assert_eq!(o.keepalives_idle, Duration::from_secs(5));
        assert!(o.statement_timeout.is_zero());
        assert_eq!(
            o.idle_in_transaction_session_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(o.application_name, "worker a");
    }

    #[test]
    fn the_connection_settings_reach_the_driver_and_the_session() {
        let (mut c, o) =
            parse_url("postgres://u@db/app?statement_timeout=1234&keepalives_idle=7").unwrap();
        let o = o.with_application_name("broker-7");
        o.apply(&mut c);
        let (mut given, o) =
            parse_url("postgres://u@db/app?options=-c%20search_path%3Dx&statement_timeout=0")
                .unwrap();
        o.apply(&mut given);
        assert_eq!(
            given.get_options(),
            Some("-c search_path=x -c statement_timeout=0 -c idle_in_transaction_session_timeout=60000")
        );
        assert_eq!(c.get_application_name(), Some("broker-7"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(
            c.get_options(),
            Some("-c statement_timeout=1234 -c idle_in_transaction_session_timeout=60000")
        );
    }

    #[test]
    fn a_percent_encoded_password_is_decoded() {
        let (c, _) = parse_url("postgres://bob:p%40ss%2Fw%25rd%3F@db/my%20db").unwrap();
        assert_eq!(c.get_password(), Some(&b"p@ss/w%rd?"[..]));
        assert_eq!(c.get_dbname(), Some("my db"));
        let (c, _) = parse_url("postgres://b%40b@db/app").unwrap();
        assert_eq!(c.get_user(), Some("b@b"));
    }

    #[test]
    fn each_bad_option_is_named_with_its_value() {
        for (option, value, says) in [
            ("schema", "Bad-Name", "schema `Bad-Name`"),
            ("pool_size", "0", "1–1000"),
            ("pool_size", "many", "1–1000"),
            ("listen", "nope", "true or false"),
            (
                "sslmode",
                "verify",
                "disable, prefer, require, verify-ca, verify-full",
            ),
            ("sslrootcert", "", "a file path"),
            ("sslcert", "", "a file path"),
            ("sslkey", "", "a file path"),
            ("connect_timeout", "0", "seconds"),
            ("connect_timeout", "ten", "seconds"),
            ("keepalives", "yes", "true or false"),
            ("keepalives_idle", "-1", "seconds"),
            ("statement_timeout", "1s", "milliseconds"),
            ("idle_in_transaction_session_timeout", "-5", "milliseconds"),
            ("application_name", &"x".repeat(64), "63 printable"),
        ] {
            let e = error(&format!("postgres://u:secret@db/app?{option}={value}"));
            assert!(
                e.contains(&format!("{option}={value}")) || e.contains(value),
                "{option}: {e}"
            );
            assert!(e.contains(says), "{option}: {e}");
            assert!(!e.contains("secret"), "{option}: {e}");
        }
    }

    #[test]
    fn unknown_options_and_bad_urls_are_refused_without_showing_the_password() {
        let e = error("postgres://u:secret@db/app?nonsense=1");
        assert!(e.contains("unknown option `nonsense`"), "{e}");
        assert!(e.contains("known options: schema, pool_size"), "{e}");
        assert!(e.contains("u:***@db") && !e.contains("secret"), "{e}");
        for (url, says) in [
            ("mysql://u:secret@db/app", "scheme `mysql:`"),
            ("postgres://:secret@db/app", "no user"),
            ("postgres://u:secret@db", "names no database"),
            ("postgres://u:secret@db:99999/app", "invalid port"),
            ("postgres://u:secret@db/app/more", "more than one segment"),
            ("not a url", "expected postgres://"),
            (
                "postgres://u:secret@db/app?schema=a&schema=b",
                "option `schema` is given twice",
            ),
        ] {
            let e = error(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }
}
