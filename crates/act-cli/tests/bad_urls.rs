//! Every store URL option of every backend, given a bad value in turn, and
//! the other ways a URL can be wrong (unknown scheme, unknown option, an
//! option given twice, a server that is down, a host that does not
//! resolve): the `act` binary prints one `error: …` line that names what is
//! wrong and never shows the password, exits 1, and does not panic. The
//! lists are checked against each backend's `KNOWN_OPTIONS`, so an option
//! added later without a case here fails this test.
//!
//! No server is touched: every bad option is refused before connecting, and
//! the servers that are "down" are closed ports on 127.0.0.1.

mod common;

use common::act;

const PASSWORD: &str = "sekret";

/// Runs `act status --store url` and checks the one-line error, returning it.
fn refused(url: &str) -> String {
    let out = act()
        .args(["status", "--store", url])
        .output()
        .expect("run act");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{url}: expected exit 1, got {:?}; stderr: {stderr}",
        out.status.code()
    );
    assert!(!stderr.contains("panicked"), "{url}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{url}: expected one line, got {stderr}");
    assert!(lines[0].starts_with("error: "), "{url}: {stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "{url}: the password is shown: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{url}: printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `(option=value, what the message must contain)` for each option.
fn check_every_option(base: &str, known: &[&str], cases: &[(&str, &str)]) {
    for option in known {
        assert!(
            cases.iter().any(|(c, _)| c
                .split('&')
                .any(|pair| pair.split('=').next() == Some(option))),
            "no bad-value case for option `{option}` of {base}"
        );
    }
    for (option, says) in cases {
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}{option}");
        let e = refused(&url);
        assert!(e.contains(says), "{url}: expected {says:?} in: {e}");
    }
}

#[test]
fn every_postgres_option_with_a_bad_value_is_one_line_naming_it() {
    let base = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/test");
    check_every_option(
        &base,
        act_pg::KNOWN_OPTIONS,
        &[
            ("schema=1bad", "schema `1bad`"),
            ("pool_size=0", "pool_size=0"),
            ("listen=maybe", "listen=maybe"),
            ("sslmode=verify", "sslmode=verify"),
            (
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert `/nonexistent/ca.pem`",
            ),
            ("sslcert=/nonexistent/c.pem", "sslcert and sslkey"),
            ("sslkey=/nonexistent/k.pem", "sslcert and sslkey"),
            ("connect_timeout=soon", "connect_timeout=soon"),
            ("keepalives=maybe", "keepalives=maybe"),
            ("keepalives_idle=-5", "keepalives_idle=-5"),
            ("statement_timeout=forever", "statement_timeout=forever"),
            (
                "idle_in_transaction_session_timeout=x",
                "idle_in_transaction_session_timeout=x",
            ),
            ("application_name=caf%C3%A9", "application_name=café"),
            // `options` goes to the server as is: only the server can judge
            // it, so a server that is down reports that instead.
            ("options=-c%20x", "unavailable"),
            ("nonsense=1", "unknown option `nonsense`"),
            ("schema=a&schema=b", "option `schema` is given twice"),
        ],
    );
}

#[test]
fn every_redis_option_with_a_bad_value_is_one_line_naming_it() {
    let base = format!("redis://:{PASSWORD}@127.0.0.1:1/0");
    check_every_option(
        &base,
        act_redis::KNOWN_OPTIONS,
        &[
            ("prefix=bad%20prefix", "prefix `bad prefix`"),
            ("assume_noeviction=maybe", "`assume_noeviction`"),
            ("timeout_ms=soon", "`timeout_ms`"),
            ("connect_timeout_ms=-1", "`connect_timeout_ms`"),
            ("keepalive_s=x", "`keepalive_s`"),
            ("client_name=has%20space", "client name `has space`"),
            ("protocol=resp9", "`protocol`"),
            ("tls_ca=/x", "`tls_ca` needs a TLS connection"),
            ("tls_cert=/x", "`tls_cert` needs a TLS connection"),
            ("tls_key=/x", "`tls_key` needs a TLS connection"),
            ("tls_insecure=maybe", "`tls_insecure`"),
            ("nonsense=1", "unknown option `nonsense`"),
            ("prefix=a&prefix=b", "option `prefix` is given twice"),
        ],
    );
    let tls = format!("rediss://:{PASSWORD}@127.0.0.1:1/0");
    check_every_option(
        &tls,
        &[],
        &[
            (
                "tls_ca=/nonexistent/ca.pem",
                "`tls_ca` file `/nonexistent/ca.pem` cannot be read",
            ),
            ("tls_cert=/nonexistent/c.pem", "`tls_cert` needs `tls_key`"),
            ("tls_key=/nonexistent/k.pem", "`tls_key` needs `tls_cert`"),
        ],
    );
}

#[test]
fn every_sqlite_option_with_a_bad_value_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("sqlite://{}", dir.path().join("x.db").display());
    check_every_option(
        &base,
        act_sqlite::KNOWN_OPTIONS,
        &[
            ("readers=0", "`readers`"),
            ("readers=lots", "`readers`"),
            ("busy_timeout_ms=x", "`busy_timeout_ms`"),
            ("watch_ms=x", "`watch_ms`"),
            ("queue_sync=x", "`queue_sync`"),
            ("nonsense=1", "unknown option `nonsense`"),
            ("readers=1&readers=2", "option `readers` is given twice"),
        ],
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused URL created nothing"
    );
}

#[test]
fn unknown_schemes_down_servers_and_unknown_hosts_are_one_line_with_their_cause() {
    for (url, says) in [
        (
            format!("mysql://u:{PASSWORD}@h/db"),
            "unknown store URL `mysql://u:***@h/db`",
        ),
        (
            format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/test"),
            "Connection refused",
        ),
        (
            format!("redis://:{PASSWORD}@127.0.0.1:1/0"),
            "Connection refused",
        ),
        (
            format!("postgres://postgres:{PASSWORD}@no-such-host.invalid/test"),
            "unavailable",
        ),
        (
            format!("redis://:{PASSWORD}@no-such-host.invalid/0"),
            "unavailable",
        ),
        (format!("postgres://:{PASSWORD}@127.0.0.1/test"), "no user"),
    ] {
        let e = refused(&url);
        assert!(e.contains(says), "{url}: expected {says:?} in: {e}");
    }
}
