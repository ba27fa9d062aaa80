//! TLS for the pool and the LISTEN connection, with libpq's `sslmode`
//! semantics (feature `tls`, on by default).
//!
//! [`connector`] turns [`TlsOptions`] into one rustls connector shared by
//! every connection of a store. What it checks depends on the mode:
//!
//! - `disable`: never used (the driver does not ask for TLS).
//! - `prefer`, `require`: encrypt; verify nothing, as libpq does when no
//!   root certificate is given. With `sslrootcert`, verify the chain
//!   (libpq: "if a root CA file exists, require behaves like verify-ca").
//! - `verify-ca`: the chain up to a trusted root, not the host name
//!   ([`ChainOnly`] wraps rustls's verifier and forgives only a name
//!   mismatch).
//! - `verify-full`: the chain and the host name.
//!
//! Roots come from `sslrootcert` (a PEM file: its certificates are the only
//! roots, the system's store is not added), or the system's trust store
//! when it is absent or `system`. A client certificate (`sslcert` +
//! `sslkey`, PEM) is offered when the server asks for one. Files are read
//! once, when the store opens (a blocking read: call from a blocking task).

use std::path::Path;
use std::sync::Arc;

use act::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::options::{SslMode, TlsOptions};

/// The connector every connection of a store uses.
pub(crate) type Connector = tokio_postgres_rustls::MakeRustlsConnect;

/// Builds the connector for `options` (reads the PEM files it names).
/// A missing or unreadable file is [`Error::InvalidInput`] naming the option
/// and the path.
pub(crate) fn connector(options: &TlsOptions) -> act::Result<Connector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("TLS setup failed: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (options.mode, &options.root_cert) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => {
            Arc::new(Unverified(provider.clone()))
        }
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, root) => {
            Arc::new(ChainOnly(webpki(roots(root.as_deref())?, &provider)?))
        }
        (SslMode::VerifyFull, root) => webpki(roots(root.as_deref())?, &provider)?,
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&options.cert, &options.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::InvalidInput(format!(
                    "sslkey `{}`: cannot read a PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::InvalidInput(format!(
                    "sslcert `{}` and sslkey: unusable client certificate: {e}",
                    cert.display()
                ))
            })?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::InvalidInput(
                "sslcert and sslkey go together: give both (the client certificate and its private key) or neither".into(),
            ))
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Certificates from a PEM file; `option` names it in errors.
fn certificates(option: &str, path: &Path) -> act::Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::InvalidInput(format!(
            "{option} `{}`: cannot read PEM certificates: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The trusted roots: the PEM file `path`, or the system's store when it is
/// `None` or `system` (libpq's `sslrootcert=system`).
fn roots(path: Option<&Path>) -> act::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match path {
        Some(path) if path != Path::new("system") => {
            for cert in certificates("sslrootcert", path)? {
                store.add(cert).map_err(|e| {
                    Error::InvalidInput(format!(
                        "sslrootcert `{}`: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "the system trust store has no root certificates{}: give sslrootcert=PATH (a PEM file of the server's CA)",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )));
            }
        }
    }
    Ok(store)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> act::Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::InvalidInput(format!("TLS setup failed: {e}")))
}

/// `verify-ca`: rustls's full verification, forgiving only a certificate
/// that is not valid for the host name (the name check is the last one
/// rustls makes, so the chain, validity dates and usage were checked).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root certificate: encrypted, the server
/// unauthenticated (libpq does the same). The handshake signatures are
/// still checked, so the session key belongs to whoever sent the
/// certificate.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// True when `e` is a TLS failure (a certificate that did not verify, a
/// handshake the server refused): a misconfiguration, never transient.
pub(crate) fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<rustls::Error>()
        || e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>())
}
