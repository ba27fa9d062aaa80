//! TLS and connection failures against private `redis-server`s that listen
//! with TLS only, with a CA, server and client certificates made per test
//! (rcgen). Each test owns its server; none touches the machine's Redis.
//! Every failure must be quick (bounded by the URL's timeouts) and say what
//! to fix; misconfigurations are `Error::Store` (a worker fails fast), a
//! server that is down is `Error::Unavailable`.
#![cfg(feature = "tls")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use act::{Append, Error, EventStore, Message, Query};
use act_redis::RedisStore;
use act_testservers::redis::PrivateRedis;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;

/// How long a failing open may take: the URLs below allow 2 s per connect
/// and per reply; redis-rs retries twice; a loaded machine gets slack.
const FAILS_WITHIN: Duration = Duration::from_secs(30);

/// A CA and the certificates it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "act test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let pki = Pki { dir };
        std::fs::write(pki.path("ca.pem"), ca_cert.pem()).unwrap();
        for (name, sans) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ),
            ("elsewhere", vec!["elsewhere.example".to_string()]),
            ("client", vec!["act-client".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(pki.path(&format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(pki.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// A TLS-only server presenting `cert` (`server` or `elsewhere`).
    fn server(&self, cert: &str, client_certs: bool) -> PrivateRedis {
        let (c, k, ca) = (
            self.arg(&format!("{cert}.pem")),
            self.arg(&format!("{cert}.key")),
            self.arg("ca.pem"),
        );
        PrivateRedis::start_tls(&[
            "--tls-cert-file",
            &c,
            "--tls-key-file",
            &k,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ])
    }
}

/// `rediss://localhost:PORT/0?` plus `query` and short timeouts.
fn url(server: &PrivateRedis, query: &str) -> String {
    format!(
        "rediss://localhost:{}/0?connect_timeout_ms=2000&timeout_ms=2000&{query}",
        server.port()
    )
}

fn ca_query(pki: &Pki) -> String {
    format!("tls_ca={}", encode(&pki.path("ca.pem")))
}

/// Percent-encodes a path for a URL query (temp dirs hold no `&` or `%`,
/// but the parser must decode what users encode).
fn encode(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('%', "%25")
        .replace(' ', "%20")
}

/// Opens `url` expecting a failure; returns it with how long it took.
async fn open_fails(url: &str) -> Error {
    let started = Instant::now();
    let e = match tokio::time::timeout(FAILS_WITHIN, RedisStore::open(url)).await {
        Ok(Ok(_)) => panic!("{url} opened but should not"),
        Ok(Err(e)) => e,
        Err(_) => panic!("opening {url} hung for {FAILS_WITHIN:?}"),
    };
    eprintln!("{url}\n  -> after {:?}: {e}", started.elapsed());
    e
}

fn permanent(e: &Error, says: &str) {
    assert!(matches!(e, Error::Store { .. }), "not permanent: {e:?}");
    assert!(e.to_string().contains(says), "{e}");
}

#[tokio::test]
async fn a_store_over_tls_appends_reads_and_wakes_other_handles() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let url = url(&server, &format!("{}&prefix=tls-kit", ca_query(&pki)));
    let writer = RedisStore::open(&url).await.expect("open over TLS");
    let watcher = RedisStore::open(&url)
        .await
        .expect("second handle over TLS");
    let mut wake = watcher.wake();
    let appended = writer
        .append(Append::new(
            "account-1",
            vec![Message::new("Opened", json!({"by": "tls"}))],
        ))
        .await
        .unwrap();
    assert_eq!(appended.len(), 1);
    let read = watcher
        .query(&Query::new().stream("account-1"))
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].name, "Opened");
    // The wake-up crosses handles only through pub/sub over TLS.
    tokio::time::timeout(Duration::from_secs(20), wake.changed())
        .await
        .expect("no wake-up through pub/sub over TLS within 20 s")
        .unwrap();
    // Operators see act's connections by name.
    let mut c = redis::Client::build_with_tls(
        format!("rediss://localhost:{}/0", server.port()),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(pki.path("ca.pem")).unwrap()),
        },
    )
    .unwrap()
    .get_connection_with_timeout(Duration::from_secs(5))
    .unwrap();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(clients.contains(" name=act "), "{clients}");
}

#[tokio::test]
async fn a_ca_the_client_does_not_know_is_refused_for_good() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let e = open_fails(&url(&server, "")).await;
    permanent(&e, "not signed by a CA this client trusts");
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused_for_good() {
    let pki = Pki::new();
    let server = pki.server("elsewhere", false);
    let e = open_fails(&url(&server, &ca_query(&pki))).await;
    permanent(&e, "certificate is for another host name");
}

#[tokio::test]
async fn tls_insecure_connects_without_the_ca() {
    let pki = Pki::new();
    let server = pki.server("elsewhere", false);
    let store = RedisStore::open(&url(&server, "tls_insecure=true&prefix=insecure"))
        .await
        .expect("tls_insecure=true skips verification");
    assert_eq!(store.head().await.unwrap(), 0);
}

#[tokio::test]
async fn a_server_that_requires_client_certificates() {
    let pki = Pki::new();
    let server = pki.server("server", true);
    let with = format!(
        "{}&tls_cert={}&tls_key={}",
        ca_query(&pki),
        encode(&pki.path("client.pem")),
        encode(&pki.path("client.key"))
    );
    let store = RedisStore::open(&url(&server, &with))
        .await
        .expect("a client certificate the server's CA signed");
    assert_eq!(store.head().await.unwrap(), 0);
    let e = open_fails(&url(&server, &ca_query(&pki))).await;
    assert!(
        !matches!(e, Error::Unavailable { .. }),
        "a missing client certificate must not look transient: {e:?}"
    );
}

#[tokio::test]
async fn plaintext_to_a_tls_port_fails_quickly() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let plain = format!(
        "redis://127.0.0.1:{}/0?connect_timeout_ms=2000&timeout_ms=2000",
        server.port()
    );
    open_fails(&plain).await;
}

/// A TLS hello sent to a plaintext port gets no answer at all (Redis
/// waits for the end of what it takes for an inline command): the open
/// fails for good after about the connect timeout, naming the port.
#[tokio::test]
async fn tls_to_a_plaintext_port_fails_for_good_and_says_so() {
    let server = PrivateRedis::start(&[]);
    let e = open_fails(&format!(
        "rediss://127.0.0.1:{}/0?connect_timeout_ms=2000&timeout_ms=2000",
        server.port()
    ))
    .await;
    permanent(
        &e,
        &format!(
            "TLS handshake with 127.0.0.1:{} did not complete within 2s, and the port answers \
             plaintext Redis: it is not a TLS port",
            server.port()
        ),
    );
    assert!(!e.to_string().contains('\n'), "one line: {e}");
}

#[tokio::test]
async fn unreadable_tls_files_are_named() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let e = open_fails(&url(&server, "tls_ca=/nonexistent/ca.pem")).await;
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("`tls_ca` file `/nonexistent/ca.pem` cannot be read")),
        "{e}"
    );
    let e = open_fails(&url(
        &server,
        &format!("tls_ca={}", encode(&pki.path("server.key"))),
    ))
    .await;
    assert!(
        e.to_string().contains("holds no PEM certificate block"),
        "{e}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_for_good() {
    let server = PrivateRedis::start(&[]);
    let port = server.port();
    // Set after the start: the readiness check does not authenticate.
    let mut c = redis::Client::open(server.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right%pass")
        .query(&mut c)
        .unwrap();
    let e = open_fails(&format!(
        "redis://:wrong@127.0.0.1:{port}/0?connect_timeout_ms=2000&timeout_ms=2000"
    ))
    .await;
    assert!(matches!(e, Error::Store { .. }), "not permanent: {e:?}");
    assert!(!e.to_string().contains("wrong@"), "{e}");
    // The right one, percent-encoded, opens.
    RedisStore::open(&format!(
        "redis://:right%25pass@127.0.0.1:{port}/0?prefix=pw"
    ))
    .await
    .expect("the percent-decoded password is accepted");
}

#[tokio::test]
async fn a_server_that_is_down_is_transient() {
    let port = act_testservers::free_port();
    let e = open_fails(&format!(
        "redis://127.0.0.1:{port}/0?connect_timeout_ms=2000&timeout_ms=2000"
    ))
    .await;
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    let e =
        open_fails("redis://no-such-host.invalid/0?connect_timeout_ms=2000&timeout_ms=2000").await;
    assert!(!e.to_string().is_empty());
}
