//! A private Redis server for one test (see the crate docs).
//!
//! ```no_run
//! let mut server = act_testservers::redis::PrivateRedis::start(&[]);
//! let url = server.url(); // redis://127.0.0.1:PORT/0
//! server.restart(); // same port, empty again (no persistence)
//!
//! // TLS only: no plaintext port; the test makes the certificates.
//! let tls = act_testservers::redis::PrivateRedis::start_tls(&[
//!     "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
//!     "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no",
//! ]);
//! let url = tls.url(); // rediss://localhost:PORT/0
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it was started.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(20);

/// Attempts at finding a free port when another process takes the one
/// [`crate::free_port`] picked before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` on a free local port, bound to 127.0.0.1, without
/// persistence (`--save "" --appendonly no`), its working directory in a
/// temporary directory. Killed (SIGKILL) when dropped.
pub struct PrivateRedis {
    port: u16,
    /// Listens with TLS only (`--port 0 --tls-port PORT`).
    tls: bool,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts a server with `extra_args` appended to the defaults (e.g.
    /// `["--maxmemory-policy", "allkeys-lru"]`) and waits until it answers
    /// `PING`. Panics with the server's log when it does not start.
    pub fn start(extra_args: &[&str]) -> PrivateRedis {
        Self::start_on(false, extra_args)
    }

    /// Starts a server that accepts TLS connections only (`--port 0
    /// --tls-port PORT`; no plaintext port at all). `extra_args` must name
    /// its files: `--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`
    /// and, when clients need no certificate, `--tls-auth-clients no`.
    /// Ready once its log says so and the port accepts connections. Panics
    /// with the log when it does not start (e.g. a redis-server built
    /// without TLS).
    pub fn start_tls(extra_args: &[&str]) -> PrivateRedis {
        Self::start_on(true, extra_args)
    }

    fn start_on(tls: bool, extra_args: &[&str]) -> PrivateRedis {
        let dir = tempfile::Builder::new()
            .prefix("act-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("no temporary directory for redis-server: {e}"));
        let args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let mut server = PrivateRedis {
            port: 0,
            tls,
            args,
            child: None,
            dir,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = crate::free_port();
            match server.spawn() {
                Ok(()) => return server,
                // The port was taken meanwhile: try another one.
                Err(log) => last = log,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts; its log:\n{last}");
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://localhost:PORT/0` for a
    /// TLS server (the name a test's server certificate is made for).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}/0", self.port)
        } else {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no shutdown, no save) and waits for it to
    /// exit. Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same arguments
    /// (empty: it kept nothing) and waits until it answers `PING`. Panics
    /// when it is still running or does not start.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: the server is still running (kill it first)"
        );
        if let Err(log) = self.spawn() {
            panic!(
                "redis-server did not start again on port {}; its log:\n{log}",
                self.port
            );
        }
    }

    /// Kills the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Stops the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = match &self.child {
            Some(child) => child.id(),
            None => panic!("cannot send {signal}: the server is not running"),
        };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {signal} {pid}: {e}"));
        assert!(status.success(), "kill {signal} {pid} failed: {status}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Spawns the server on `self.port` and waits until it answers `PING`;
    /// on failure returns its log (the process is gone).
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log_path())
            .unwrap_or_else(|e| panic!("cannot create the redis-server log: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share the redis-server log: {e}"));
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let mut child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            let up = if self.tls {
                self.log().contains("Ready to accept connections")
                    && TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), POLL * 10)
                        .is_ok()
            } else {
                ready(self.port, child.id())
            };
            if up {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not answer PING within {READY_WITHIN:?}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill();
    }
}

/// True when the server on `port` is the process `pid` (not another one
/// that took the port first) and answers `PING` with `+PONG` (a server
/// still loading answers `-LOADING`).
fn ready(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), POLL * 10) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let ours = request(&mut s, b"INFO server\r\n").is_some_and(|info| {
        info.lines()
            .any(|l| l.trim() == format!("process_id:{pid}"))
    });
    ours && request(&mut s, b"PING\r\n").as_deref() == Some("PONG")
}

/// Sends one inline command and reads one simple or bulk string reply.
fn request(s: &mut TcpStream, command: &[u8]) -> Option<String> {
    s.write_all(command).ok()?;
    let line = read_line(s)?;
    match line.split_at_checked(1)? {
        ("+", text) => Some(text.to_string()),
        ("$", len) => {
            let len: usize = len.parse().ok()?;
            let mut body = vec![0u8; len + 2];
            s.read_exact(&mut body).ok()?;
            body.truncate(len);
            String::from_utf8(body).ok()
        }
        _ => None,
    }
}

/// One reply line without its CRLF.
fn read_line(s: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut byte).ok()?;
        line.push(byte[0]);
        if line.len() > 64 * 1024 {
            return None;
        }
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).ok()
}
