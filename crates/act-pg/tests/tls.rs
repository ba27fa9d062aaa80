//! TLS against real servers: each test starts its own private PostgreSQL
//! with `ssl = on` and certificates made here (a CA, a server certificate
//! for `localhost`, a client certificate for user `postgres`), never the
//! machine's own server. The URL options `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` behave as libpq's, the pool and the LISTEN
//! connection both use TLS, and each misconfiguration is a clear error
//! that is not transient (a worker fails fast instead of retrying forever).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use act::{Append, Error, EventStore, Message, Query};
use act_pg::PgStore;
use act_testservers::postgres::{PrivatePostgres, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

/// How long a wake-up may take on a loaded machine before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Certificates for one test, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server: ServerTls,
}

impl Pki {
    /// A CA, a server certificate for `localhost` signed by it, a client
    /// certificate with CN `postgres` signed by it, and a second CA that
    /// signed nothing here.
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("act-pg-tls-")
            .tempdir()
            .expect("a temporary directory");
        let (ca_pem, ca) = authority("act test CA");
        let (other_pem, _) = authority("some other CA");
        let (server_cert, server_key) = leaf(&ca, "localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(&ca, "postgres", ExtendedKeyUsagePurpose::ClientAuth);
        for (name, text) in [
            ("ca.pem", &ca_pem),
            ("other-ca.pem", &other_pem),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write a PEM file");
        }
        Pki {
            dir,
            server: ServerTls {
                cert_pem: server_cert,
                key_pem: server_key,
                client_ca_pem: Some(ca_pem),
                hba: None,
            },
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server that accepts TCP connections over TLS only, with `auth`
    /// (`trust`, `cert`, `scram-sha-256`), and anything over its socket.
    fn server(&self, auth: &str) -> PrivatePostgres {
        let tls = ServerTls {
            hba: Some(vec![
                "local all all trust".into(),
                format!("hostssl all all 127.0.0.1/32 {auth}"),
                "hostnossl all all 127.0.0.1/32 reject".into(),
            ]),
            ..self.server.clone()
        };
        tokio::task::block_in_place(|| PrivatePostgres::start_tls(&tls))
    }
}

fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate for `name` (a DNS name for a server, the CN for a client).
fn leaf(
    ca: &Issuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("leaf parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("a leaf key");
    let cert = params.signed_by(&key, ca).expect("a signed leaf");
    (cert.pem(), key.serialize_pem())
}

fn url(pg: &PrivatePostgres, host: &str, options: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/postgres?schema=tls_t&listen=false&application_name=act-tls-test&{options}",
        pg.port()
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Opens the store, appends and reads one event back.
async fn round_trip(url: &str) -> Arc<PgStore> {
    let store = Arc::new(
        PgStore::open(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}")),
    );
    let stream = format!("tls-{:016x}", fastrand::u64(..));
    store
        .append(Append::new(
            stream.as_str(),
            vec![Message::new("Pinged", json!({ "over": "tls" }))],
        ))
        .await
        .unwrap_or_else(|e| panic!("append over TLS: {e}"));
    let read = store
        .query(&Query::new().stream(stream.as_str()))
        .await
        .unwrap_or_else(|e| panic!("query over TLS: {e}"));
    assert_eq!(read.len(), 1);
    store
}

/// How many of the test's sessions use TLS, and how many do not (asked
/// through the unix socket).
fn sessions(pg: &PrivatePostgres) -> (i64, i64) {
    let line = tokio::task::block_in_place(|| {
        pg.psql(
            "SELECT count(*) FILTER (WHERE s.ssl) || ',' || count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'act-tls-test'",
        )
    });
    let (tls, plain) = line.split_once(',').expect("two counts");
    (tls.parse().unwrap(), plain.parse().unwrap())
}

/// The open fails with a permanent error; returns its text.
async fn refused(url: &str) -> String {
    let e = PgStore::open(url)
        .await
        .err()
        .unwrap_or_else(|| panic!("{url} should not open"));
    println!("{url}\n  -> {e}");
    assert!(
        !e.is_transient(),
        "a misconfiguration must not be retried as if the server were down: {e:?}"
    );
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_and_host_opens_the_store_over_tls() {
    let pki = Pki::new();
    let pg = pki.server("trust");
    let store = round_trip(&url(
        &pg,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            path(&pki.file("ca.pem"))
        ),
    ))
    .await;
    let (tls, plain) = sessions(&pg);
    assert!(
        tls >= 1 && plain == 0,
        "{tls} TLS sessions, {plain} plaintext"
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_for_another_name() {
    let pki = Pki::new();
    let pg = pki.server("trust");
    let e = refused(&url(
        &pg,
        "127.0.0.1",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            path(&pki.file("ca.pem"))
        ),
    ))
    .await;
    assert!(e.contains("invalid peer certificate"), "{e}");
    assert!(e.contains("not valid for name"), "{e}");
    assert!(e.contains("127.0.0.1"), "names the host it checked: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_the_chain_whatever_the_name_and_refuses_another_ca() {
    let pki = Pki::new();
    let pg = pki.server("trust");
    round_trip(&url(
        &pg,
        "127.0.0.1",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            path(&pki.file("ca.pem"))
        ),
    ))
    .await;
    let e = refused(&url(
        &pg,
        "localhost",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            path(&pki.file("other-ca.pem"))
        ),
    ))
    .await;
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_a_root_certificate() {
    let pki = Pki::new();
    let pg = pki.server("trust");
    let store = round_trip(&url(&pg, "127.0.0.1", "sslmode=require")).await;
    let (tls, plain) = sessions(&pg);
    assert!(
        tls >= 1 && plain == 0,
        "{tls} TLS sessions, {plain} plaintext"
    );
    drop(store);
    // The default (prefer) tries TLS first, so it gets in too.
    round_trip(&url(&pg, "127.0.0.1", "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_server_requires_is_sent_and_its_absence_is_clear() {
    let pki = Pki::new();
    let pg = pki.server("cert");
    let verify = format!(
        "sslmode=verify-full&sslrootcert={}",
        path(&pki.file("ca.pem"))
    );
    round_trip(&url(
        &pg,
        "localhost",
        &format!(
            "{verify}&sslcert={}&sslkey={}",
            path(&pki.file("client.pem")),
            path(&pki.file("client.key"))
        ),
    ))
    .await;
    let e = refused(&url(&pg, "localhost", &verify)).await;
    assert!(e.contains("certificate"), "{e}");
    let e = refused(&url(
        &pg,
        "localhost",
        &format!("{verify}&sslcert={}", path(&pki.file("client.pem"))),
    ))
    .await;
    assert!(e.contains("sslcert and sslkey go together"), "{e}");
    let e = refused(&url(
        &pg,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await;
    assert!(e.contains("sslrootcert `/nonexistent/ca.pem`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_only_server_is_refused_clearly() {
    let pki = Pki::new();
    let pg = pki.server("trust");
    let e = refused(&url(&pg, "127.0.0.1", "sslmode=disable")).await;
    assert!(e.contains("pg_hba.conf rejects connection"), "{e}");
    assert!(e.contains("no encryption"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_of_a_server_without_tls_is_refused_clearly() {
    let pki = Pki::new();
    let pg = tokio::task::block_in_place(PrivatePostgres::start);
    let ca = path(&pki.file("ca.pem"));
    for options in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let e = refused(&url(&pg, "localhost", &options)).await;
        assert!(e.contains("server does not support TLS"), "{options}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // prefer falls back to plaintext, as libpq does.
    round_trip(&url(&pg, "127.0.0.1", "sslmode=prefer")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_a_percent_encoded_one_works() {
    let pki = Pki::new();
    let pg = pki.server("scram-sha-256");
    tokio::task::block_in_place(|| pg.psql("ALTER USER postgres PASSWORD 'p@ss/w%rd?'"));
    let with = |password: &str| {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres?schema=tls_t&listen=false&sslmode=require",
            pg.port()
        )
    };
    round_trip(&with("p%40ss%2Fw%25rd%3F")).await;
    let e = refused(&with("wrong-secret")).await;
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("wrong-secret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_transient_and_says_so() {
    let port = act_testservers::free_port();
    let e = PgStore::open(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=5"
    ))
    .await
    .expect_err("nobody listens there");
    println!("{e}");
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("Connection refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_connection_uses_tls_too() {
    let pki = Pki::new();
    let pg = pki.server("trust");
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?schema=tls_t&application_name=act-tls-test\
         &sslmode=verify-full&sslrootcert={}",
        pg.port(),
        path(&pki.file("ca.pem"))
    );
    let writer = round_trip(&url).await;
    let reader = PgStore::open(&url).await.expect("a second handle");
    let mut wake = reader.wake();
    tokio::time::timeout(PATIENCE, wake.changed())
        .await
        .unwrap_or_else(|_| panic!("the LISTEN connection was not up after {PATIENCE:?}"))
        .expect("the store is alive");
    let listening = tokio::task::block_in_place(|| {
        pg.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.query LIKE 'LISTEN%' AND s.ssl",
        )
    });
    assert_eq!(listening, "1", "one LISTEN session, over TLS");
    writer
        .append(Append::new(
            "tls-2",
            vec![Message::new("Pinged", json!({}))],
        ))
        .await
        .expect("append");
    tokio::time::timeout(PATIENCE, wake.changed())
        .await
        .unwrap_or_else(|_| panic!("no wake-up from the other handle after {PATIENCE:?}"))
        .expect("the store is alive");
}
