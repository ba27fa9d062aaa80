//! # act-testservers
//!
//! Private servers for tests that break what they talk to: restart it, stop
//! it, make it read-only, reconfigure it. Each server runs on a free local
//! port with its data in a temporary directory, belongs to the test that
//! started it, and is stopped (and its files removed) when dropped. Nothing
//! here ever touches the machine's own PostgreSQL or Redis.
//!
//! - [`postgres::PrivatePostgres`]: `initdb` into a temp dir and `postgres`
//!   on a free port (as the `postgres` user when running as root, since
//!   initdb refuses root); [`postgres::PrivatePostgres::start_tls`] for one
//!   with `ssl = on`, given certificates and `pg_hba.conf` lines.
//! - [`redis::PrivateRedis`]: `redis-server` on a free port.
//! - `otlp::Receiver` (feature `otlp`): an OTLP/HTTP trace receiver on a
//!   free port, keeping the spans an exporter sends.
//!
//! ## As root or as a normal user
//!
//! Both work. As a normal user every server runs as that user (neither
//! `initdb` nor `redis-server` needs a privilege). As root, PostgreSQL's
//! programs run as `postgres` through `runuser` and its directory is given
//! to that user; `redis-server` runs as root. The servers' files go under
//! `$TMPDIR` (default `/tmp`), which must be writable; nothing is written
//! to the working directory. To run a root-built test binary as a normal
//! user, the target directory must be readable by that user:
//!
//! ```sh
//! useradd -m actuser && install -d -o actuser /home/actuser/tmp
//! cargo test --no-run -p act-pg --test tls   # prints the binary's path
//! cd /home/actuser && runuser -u actuser -- \
//!     env HOME=/home/actuser TMPDIR=/home/actuser/tmp target/debug/deps/tls-…
//! ```

#[cfg(feature = "otlp")]
pub mod otlp;
pub mod postgres;
pub mod redis;

/// A TCP port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free local port: {e}"))
}
