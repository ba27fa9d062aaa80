//! A private PostgreSQL server for one test (see the crate docs).
//!
//! [`PrivatePostgres::start`] runs `initdb` into a temporary directory (as
//! the `postgres` user through `runuser` when the test runs as root, since
//! initdb refuses root) and starts the server with `pg_ctl` on a free port,
//! listening on 127.0.0.1 only, its unix socket in the same directory, with
//! `fsync` off (nothing here must survive a machine crash; commits still
//! reach the OS before they are acknowledged, so an immediate stop, like a
//! crash of the server, loses none). Superuser
//! `postgres`, trust authentication. Every wait polls `pg_isready` with a
//! generous bound and panics with the server's log when it is exceeded.
//! Dropping it stops the server at once and removes its files.
//!
//! Every method blocks the calling thread (it runs the server's programs);
//! from an async test, call them through `tokio::task::block_in_place` or
//! `spawn_blocking`.
//!
//! ```no_run
//! let pg = act_testservers::postgres::PrivatePostgres::start();
//! let url = pg.url("postgres");
//! pg.restart();
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a start or a stop may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// What [`PrivatePostgres::start_tls`] gives the server.
#[derive(Debug, Clone, Default)]
pub struct ServerTls {
    /// The server's certificate chain (PEM), written as `server.crt`.
    pub cert_pem: String,
    /// Its private key (PEM), written as `server.key` (mode 600).
    pub key_pem: String,
    /// CA certificates (PEM) that client certificates must chain to
    /// (`ssl_ca_file`): needed by `cert` authentication in `pg_hba.conf`.
    pub client_ca_pem: Option<String>,
    /// The lines of `pg_hba.conf`, replacing initdb's (which trusts every
    /// local and 127.0.0.1 connection, TLS or not). Keep `local all all
    /// trust`: [`PrivatePostgres::psql`] connects through the unix socket.
    pub hba: Option<Vec<String>>,
}

/// A PostgreSQL server that belongs to one test.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server's programs as this user (`Some("postgres")` as root).
    user: Option<String>,
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn binaries() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("no PostgreSQL installation under {}: {e}", root.display()))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL binaries (initdb) under {}/*/bin",
            root.display()
        )
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn describe(o: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

impl PrivatePostgres {
    /// Creates and starts a fresh server on a free local port. Panics (with
    /// the server's log) when it cannot.
    pub fn start() -> PrivatePostgres {
        let pg = PrivatePostgres::init();
        pg.start_again();
        pg
    }

    /// Creates and starts a fresh server with `ssl = on`: writes the PEM
    /// files of `tls` into its data directory (the key `chmod 600`, every
    /// file owned by the server's user, as PostgreSQL demands), and
    /// `pg_hba.conf` from `tls.hba` when it is given. Panics when it cannot.
    ///
    /// ```no_run
    /// use act_testservers::postgres::{PrivatePostgres, ServerTls};
    /// # let (cert, key, ca) = (String::new(), String::new(), String::new());
    /// let pg = PrivatePostgres::start_tls(&ServerTls {
    ///     cert_pem: cert,
    ///     key_pem: key,
    ///     client_ca_pem: Some(ca),
    ///     hba: Some(vec![
    ///         "local all all trust".into(),
    ///         "hostssl all all 127.0.0.1/32 cert".into(),
    ///         "hostnossl all all 127.0.0.1/32 reject".into(),
    ///     ]),
    /// });
    /// ```
    pub fn start_tls(tls: &ServerTls) -> PrivatePostgres {
        let pg = PrivatePostgres::init();
        let data = pg.data();
        let mut conf = String::from("\n# act-testservers: TLS\nssl = on\n");
        pg.write(&data.join("server.crt"), &tls.cert_pem, 0o644);
        pg.write(&data.join("server.key"), &tls.key_pem, 0o600);
        if let Some(ca) = &tls.client_ca_pem {
            pg.write(&data.join("client-ca.crt"), ca, 0o644);
            conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
        }
        let config = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&config)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", config.display()));
        text.push_str(&conf);
        pg.write(&config, &text, 0o600);
        if let Some(lines) = &tls.hba {
            pg.write(&data.join("pg_hba.conf"), &(lines.join("\n") + "\n"), 0o600);
        }
        pg.start_again();
        pg
    }

    /// Writes `text` to `path` with `mode`, owned by the server's user.
    fn write(&self, path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
        if let Some(user) = &self.user {
            let out = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(path)
                .output()
                .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
            assert!(
                out.status.success(),
                "chown {} failed: {}",
                path.display(),
                describe(&out)
            );
        }
    }

    /// A fresh data directory (initdb), not started.
    fn init() -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("act-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let user = running_as_root().then(|| "postgres".to_string());
        let pg = PrivatePostgres {
            dir,
            bin: binaries(),
            port: crate::free_port(),
            user,
        };
        if let Some(user) = &pg.user {
            // initdb runs as `user`: it must own the directory.
            let out = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(pg.dir.path())
                .output()
                .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
            assert!(
                out.status.success(),
                "chown {} failed: {}",
                pg.dir.path().display(),
                describe(&out)
            );
        }
        let out = pg
            .program("initdb")
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(out.status.success(), "initdb failed: {}", describe(&out));
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// One of the server's programs, run as the server's user.
    fn program(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut c = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The server's user may not be allowed into the test's directory.
        c.current_dir(self.dir.path());
        c
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL command with `psql` as `postgres` on database
    /// `postgres` through the server's unix socket (whatever `pg_hba.conf`
    /// says of TCP), in its own session (never read-only, so it can turn
    /// read-only off again). Panics when it fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGOPTIONS", "-c default_transaction_read_only=off")
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql `{sql}` failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no checkpoint,
    /// every session cut, like a crash). Waits until it is down.
    pub fn stop_immediate(&self) {
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}\n{}",
            describe(&out),
            self.log_tail()
        );
    }

    /// Starts the (stopped) server again on the same port and data, and
    /// waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .arg("-o")
            .arg(options)
            .args(["-W", "start"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            describe(&out),
            self.log_tail()
        );
        self.wait_ready();
    }

    /// Stops the server at once and starts it again.
    pub fn restart(&self) {
        self.stop_immediate();
        self.start_again();
    }

    /// Makes the server read-only for new transactions, or writable again:
    /// `ALTER SYSTEM SET default_transaction_read_only` and a configuration
    /// reload. Sessions already open pick it up at their next command; none
    /// is cut.
    pub fn set_read_only(&self, on: bool) {
        let value = if on { "on" } else { "off" };
        self.psql(&format!(
            "ALTER SYSTEM SET default_transaction_read_only = {value}"
        ));
        self.psql("SELECT pg_reload_conf()");
    }

    /// Polls `pg_isready` until the server accepts connections.
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "1",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if started.elapsed() > PATIENCE {
                panic!(
                    "the private PostgreSQL on port {} was not ready after {PATIENCE:?}; its log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Down at once; the directory goes with the TempDir.
        let _ = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_server_starts_turns_read_only_restarts_and_goes_away() {
        let pg = PrivatePostgres::start();
        assert_eq!(pg.psql("SELECT 1"), "1");
        pg.psql("CREATE TABLE t (x int)");
        pg.set_read_only(true);
        assert_eq!(
            pg.psql("SHOW default_transaction_read_only"),
            "off",
            "psql's own session stays writable"
        );
        assert_eq!(
            pg.psql("SELECT setting FROM pg_file_settings WHERE name = 'default_transaction_read_only' AND applied"),
            "on"
        );
        pg.set_read_only(false);
        pg.restart();
        pg.psql("INSERT INTO t VALUES (1)");
        let dir = pg.dir.path().to_path_buf();
        drop(pg);
        assert!(!dir.exists(), "the data directory is removed");
    }
}
