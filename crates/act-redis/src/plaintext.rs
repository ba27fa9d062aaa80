//! Telling a `rediss://` URL that it reached a plaintext Redis port.
//!
//! Such a connection does not fail by itself: Redis reads the TLS
//! ClientHello as an inline command and looks for its newline with
//! `strchr`, which stops at the hello's first zero byte (one of its first
//! seven), so it waits for more, while the client waits for the server's
//! hello. Without more, the open would time out and look like an outage
//! (retried for minutes by a worker). So when the store's first
//! connection is not up within the connect timeout, the port is asked
//! `PING` once in plaintext: a RESP reply (`+PONG`, `-NOAUTH …`, `-ERR …`)
//! means it is not a TLS port, a misconfiguration reported at once. A TLS
//! port answers a TLS alert or nothing, and a paused or overloaded server
//! answers nothing: then the open goes on waiting as before. The probe costs
//! nothing on a connection that comes up in time.

use std::future::Future;
use std::time::Duration;

use act::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::PlaintextPort;
use crate::options::RedisServer;

/// The longest reply line the probe reads.
const LONGEST_REPLY: usize = 512;

/// Waits for `connecting` (a TLS connection to `server`); when it has not
/// finished after `patience`, probes the port in plaintext meanwhile and
/// fails with [`PlaintextPort`] (inside [`Error::Store`]) when it answers
/// like a plaintext Redis. Otherwise the outcome is `connecting`'s.
pub(crate) async fn refuse_plaintext_port<T>(
    connecting: impl Future<Output = act::Result<T>>,
    server: &RedisServer,
    patience: Duration,
    store: &str,
) -> act::Result<T> {
    tokio::pin!(connecting);
    tokio::select! {
        done = &mut connecting => return done,
        _ = tokio::time::sleep(patience) => {}
    }
    tokio::select! {
        done = &mut connecting => done,
        true = answers_plaintext(&server.host, server.port, patience) => Err(Error::Store {
            store: store.to_string(),
            source: Box::new(PlaintextPort {
                addr: address(&server.host, server.port),
                waited: patience,
            }),
        }),
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// True when `host:port` answers an inline `PING` with one RESP simple
/// string or error line, within `within`. One TCP connection, closed after.
async fn answers_plaintext(host: &str, port: u16, within: Duration) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") && line.len() < LONGEST_REPLY {
            s.read_exact(&mut byte).await.ok()?;
            line.push(byte[0]);
        }
        Some(is_resp_line(&line))
    };
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(true)))
}

/// A RESP2 simple string (`+…`) or error (`-…`) line, ended by CRLF.
fn is_resp_line(line: &[u8]) -> bool {
    matches!(line.first(), Some(b'+' | b'-'))
        && line.ends_with(b"\r\n")
        && line[..line.len() - 2]
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_are_told_from_tls_alerts() {
        for reply in [
            &b"+PONG\r\n"[..],
            b"-NOAUTH Authentication required.\r\n",
            b"-ERR unknown command 'PING', with args beginning with: \r\n",
        ] {
            assert!(is_resp_line(reply), "{reply:?}");
        }
        for reply in [
            // A TLS alert record: handshake failure.
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28][..],
            b"",
            b"+PONG",
            b"$4\r\n",
            b"+\x01\x02\r\n",
        ] {
            assert!(!is_resp_line(reply), "{reply:?}");
        }
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(address("::1", 6380), "[::1]:6380");
        assert_eq!(address("127.0.0.1", 6380), "127.0.0.1:6380");
        assert_eq!(address("cache.example.com", 6380), "cache.example.com:6380");
    }
}
