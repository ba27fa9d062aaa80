//! The one `redis::Client` a store makes every connection from — the
//! command connection (a `ConnectionManager`, which reconnects by itself)
//! and the wake-up listener's pub/sub connections — so they all share the
//! address, credentials, TLS settings, TCP keepalive and library name.
//! TLS files are read once, here, when the store opens.

use std::time::Duration;

use act::Error;
use redis::io::tcp::{socket2, TcpSettings};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use crate::options::{RedisOptions, RedisServer};

/// What every connection reports with `CLIENT SETINFO LIB-NAME`.
const LIB_NAME: &str = "act";

/// Builds the client. Reads the TLS files (on a blocking thread): a file
/// that is missing, unreadable or holds no PEM block is an
/// [`Error::InvalidInput`] naming the option and the path.
pub(crate) async fn build(
    shown: &str,
    server: &RedisServer,
    options: &RedisOptions,
) -> act::Result<redis::Client> {
    let addr = match &server.tls {
        None => ConnectionAddr::Tcp(server.host.clone(), server.port),
        Some(tls) => tls_addr(shown, server, tls.insecure)?,
    };
    let mut redis = redis::RedisConnectionInfo::default()
        .set_db(server.db)
        .set_protocol(if server.resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        })
        .set_lib_name(LIB_NAME, env!("CARGO_PKG_VERSION"));
    if let Some(u) = &server.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &server.password {
        redis = redis.set_password(p);
    }
    let mut tcp = TcpSettings::default().set_nodelay(true);
    if let Some(idle) = options.keepalive {
        tcp = tcp.set_keepalive(
            socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle.min(Duration::from_secs(10))),
        );
    }
    let unusable = |e: redis::RedisError| {
        Error::InvalidInput(format!("`{shown}`: not a usable Redis URL: {e}"))
    };
    let info: ConnectionInfo = addr
        .into_connection_info()
        .map_err(unusable)?
        .set_redis_settings(redis)
        .set_tcp_settings(tcp);
    match &server.tls {
        None => redis::Client::open(info).map_err(unusable),
        Some(tls) => with_tls(shown, info, tls).await,
    }
}

#[cfg(feature = "tls")]
fn tls_addr(shown: &str, server: &RedisServer, insecure: bool) -> act::Result<ConnectionAddr> {
    // redis-rs builds its rustls config with the process's default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if insecure {
        warn_insecure(shown);
    }
    Ok(ConnectionAddr::TcpTls {
        host: server.host.clone(),
        port: server.port,
        insecure,
        tls_params: None,
    })
}

#[cfg(not(feature = "tls"))]
fn tls_addr(shown: &str, _: &RedisServer, _: bool) -> act::Result<ConnectionAddr> {
    Err(Error::InvalidInput(format!(
        "`{shown}`: this build of act-redis has no TLS (rediss://): enable its feature `tls`"
    )))
}

/// Logs, once per process, that a store does not verify its server.
#[cfg(feature = "tls")]
fn warn_insecure(shown: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            store = %shown,
            "tls_insecure=true: the Redis server's certificate is not verified; anyone on the \
             network path can read and change the traffic"
        );
    });
}

#[cfg(feature = "tls")]
async fn with_tls(
    shown: &str,
    info: ConnectionInfo,
    tls: &crate::options::TlsOptions,
) -> act::Result<redis::Client> {
    let ca = match &tls.ca {
        Some(p) => Some(read_pem(shown, "tls_ca", p, "CERTIFICATE").await?),
        None => None,
    };
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem(shown, "tls_cert", cert, "CERTIFICATE").await?,
            client_key: read_pem(shown, "tls_key", key, "PRIVATE KEY").await?,
        }),
        None => None,
    };
    if ca.is_none() && client_tls.is_none() {
        return redis::Client::open(info)
            .map_err(|e| Error::InvalidInput(format!("`{shown}`: not a usable Redis URL: {e}")));
    }
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert: ca,
        },
    )
    .map_err(|e| Error::InvalidInput(format!("`{shown}`: unusable TLS files: {e}")))
}

#[cfg(not(feature = "tls"))]
async fn with_tls(
    shown: &str,
    _: ConnectionInfo,
    _: &crate::options::TlsOptions,
) -> act::Result<redis::Client> {
    Err(Error::InvalidInput(format!(
        "`{shown}`: this build of act-redis has no TLS (rediss://): enable its feature `tls`"
    )))
}

/// Reads a PEM file that must hold at least one `-----BEGIN …{label}-----`
/// block (`PRIVATE KEY` also matches `RSA PRIVATE KEY`, `EC PRIVATE KEY`).
#[cfg(feature = "tls")]
async fn read_pem(
    shown: &str,
    option: &str,
    path: &std::path::Path,
    label: &str,
) -> act::Result<Vec<u8>> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || std::fs::read(owned))
        .await
        .map_err(|e| Error::InvalidInput(format!("`{shown}`: reading `{option}`: {e}")))?;
    let bytes = read.map_err(|e| {
        Error::InvalidInput(format!(
            "`{shown}`: `{option}` file `{}` cannot be read: {e}",
            path.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let holds = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(label));
    if !holds {
        return Err(Error::InvalidInput(format!(
            "`{shown}`: `{option}` file `{}` holds no PEM {} block",
            path.display(),
            label.to_lowercase()
        )));
    }
    Ok(bytes)
}
