//! Shared fixtures of the tests that run the real `act` binary: running
//! commands, worker processes (start, wait until started, SIGKILL, SIGSTOP,
//! SIGTERM), and the crash scenarios every durable backend must survive.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `act` binary, with no store or trace collector from the
/// environment and quiet logs.
pub fn act() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_act"));
    c.env_remove("ACT_STORE").env("ACT_LOG", "error");
    for otel in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "ACT_TRACE",
    ] {
        c.env_remove(otel);
    }
    c
}

/// Runs `act args…` and asserts it succeeded.
pub fn run(args: &[&str]) -> Output {
    let out = act().args(args).output().expect("run act");
    assert!(
        out.status.success(),
        "act {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Standard output as JSON lines.
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Sends a signal (`-TERM`, `-STOP`, …) to a child.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} failed");
}

/// Waits until `cond` holds, checking every 100 ms; panics with `what`
/// after `limit` (a guard against hangs, not a timing assertion).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An `act worker` process.
pub struct Worker {
    pub child: Child,
    pub name: String,
    started: bool,
    log: std::path::PathBuf,
}

impl Worker {
    /// Starts a worker with 2 s leases, logging to `log`.
    pub fn start(store: &str, name: &str, log_path: &Path) -> Worker {
        Worker::start_with(store, name, log_path, &[])
    }

    /// Starts a worker with 2 s leases and `extra` flags, logging to `log`.
    pub fn start_with(store: &str, name: &str, log_path: &Path, extra: &[&str]) -> Worker {
        Worker::start_leased(store, name, log_path, "2", extra)
    }

    /// Starts a worker with leases of `lease` seconds and `extra` flags,
    /// logging to `log` (warnings included).
    pub fn start_leased(
        store: &str,
        name: &str,
        log_path: &Path,
        lease: &str,
        extra: &[&str],
    ) -> Worker {
        Worker::start_env(store, name, log_path, lease, extra, &[])
    }

    /// Starts a worker with leases of `lease` seconds, `extra` flags and
    /// `env` variables, logging to `log` (warnings included).
    pub fn start_env(
        store: &str,
        name: &str,
        log_path: &Path,
        lease: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let mut args = vec![
            "worker",
            "--store",
            store,
            "--lease",
            lease,
            "--poll-ms",
            "200",
            "--json",
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        let child = act()
            .env("ACT_LOG", "warn")
            .envs(env.iter().copied())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn worker");
        Worker {
            child,
            name: name.to_string(),
            started: false,
            log: log_path.to_path_buf(),
        }
    }

    fn line(&mut self) -> String {
        let out = self.child.stdout.as_mut().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        line
    }

    /// Waits for the `started` line: from then on it handles SIGTERM.
    pub fn started(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let line = self.line();
        if line.is_empty() {
            let status = self.child.wait();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "worker {} exited before starting ({status:?}); its log ends with:\n{}",
                self.name,
                tail.join("\n")
            );
        }
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"));
        assert_eq!(v["event"], "started");
    }

    /// SIGKILL, reaped.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// True once the process has exited (a crash in a handler).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGTERM; asserts a clean exit (0) and returns the `stopped` line.
    pub fn stop(mut self) -> Value {
        self.started();
        signal(&self.child, "-TERM");
        let line = self.line();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "worker {} did not shut down cleanly: {status:?}",
            self.name
        );
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"));
        assert_eq!(v["event"], "stopped");
        v
    }
}

/// Starts `act demo --no-settle` appending `events` events with `seed`.
pub fn demo(store: &str, seed: u64, events: usize) -> Child {
    act()
        .args([
            "demo",
            "--store",
            store,
            "--no-settle",
            "--events",
            &events.to_string(),
            "--accounts",
            "100",
            "--seed",
            &seed.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Opens a store from its URL, as the binary does.
pub async fn open(url: &str) -> Arc<dyn act::Store> {
    if url.starts_with("sqlite://") {
        Arc::new(act_sqlite::SqliteStore::open_url(url).await.unwrap())
    } else if url.starts_with("postgres://") {
        Arc::new(act_pg::PgStore::open(url).await.unwrap())
    } else {
        Arc::new(act_redis::RedisStore::open(url).await.unwrap())
    }
}

/// Creates the store at `url` (read-only commands never do).
pub fn create(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { drop(open(url).await) });
}

/// The bank's log check on the store at `url`.
pub fn verify(url: &str) -> act_bank::Verdict {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { act_bank::verify(&*open(url).await).await.unwrap() })
}

/// Who holds leases now, from `act status --json`.
pub fn lease_owners(store: &str) -> Vec<String> {
    let out = run(&["status", "--store", store, "--json"]);
    json_lines(&out)
        .iter()
        .filter(|r| r.get("stream").is_some())
        .filter(|r| r["lease_expires"].is_string())
        .filter_map(|r| r["lease_owner"].as_str().map(str::to_string))
        .collect()
}

/// Three workers on `store`; `seeds.len()` concurrent `act demo --no-settle`
/// writers append `events` events each; one worker is SIGKILLed and restarted
/// every few hundred milliseconds during the run and twice after it; the
/// survivors stop on SIGTERM (exit 0); `act settle` finishes. Then the log
/// must show one receipt per source event per queue, in source order, and
/// only the poisoned queues blocked.
///
/// With `entries` (SQLite and PostgreSQL), the workers also run the
/// transactional `entries` projection, and its table must hold each deposit
/// and withdrawal exactly once (checked by a query of the table).
pub fn workers_killed_mid_run(
    store: &str,
    seeds: &[u64],
    events: usize,
    log: &Path,
    entries: bool,
) {
    create(store);
    // Each SIGKILL ends the leases of the queues in flight without a
    // settlement, and each counts as a failed attempt (promise 6): with the
    // bank's 3 retries, a deposit built to fail twice that is also in flight
    // at two kills rightly blocks its queue. This test kills a worker every
    // 200-700 ms, far more often than any fleet loses a process, so its
    // workers allow 10 retries; the poisoned deposits still block.
    let chaos: &[&str] = if entries {
        &["--max-retries", "10", "--entries"]
    } else {
        &["--max-retries", "10"]
    };
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| Worker::start_with(store, &format!("w{i}"), log, chaos))
        .collect();
    let mut demos: Vec<Child> = seeds.iter().map(|&s| demo(store, s, events)).collect();
    let mut rng = fastrand::Rng::with_seed(seeds[0]);
    let mut kills = 0;
    let mut after_demos = 0;
    while after_demos < 2 || kills < 6 {
        std::thread::sleep(Duration::from_millis(rng.u64(200..700)));
        let i = kills % workers.len();
        let w = std::mem::replace(
            &mut workers[i],
            Worker::start_with(store, &format!("w{i}-{kills}"), log, chaos),
        );
        w.kill();
        kills += 1;
        if demos.iter_mut().all(|d| d.try_wait().unwrap().is_some()) {
            after_demos += 1;
        }
    }
    for d in demos {
        let out = d.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "demo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json_lines(&out)[0]["events"], events as u64);
    }
    // The kills may all land before a restarted worker delivered anything
    // (demos finish fast, the machine may be busy): the survivors go on
    // until they have, however long that takes on a loaded machine.
    let patience = std::time::Instant::now() + Duration::from_secs(180);
    let mut before = verify(store);
    while before.totaled == 0 {
        assert!(
            std::time::Instant::now() < patience,
            "the workers delivered nothing within 180 s after the last kill"
        );
        std::thread::sleep(Duration::from_millis(200));
        before = verify(store);
    }
    for w in workers {
        w.stop();
    }
    let mut settle = vec!["settle", "--store", store, "--lease", "2"];
    settle.extend_from_slice(chaos);
    run(&settle);
    let v = verify(store);
    let total = (seeds.len() * events) as u64;
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, total);
    assert_eq!(v.totaled, total);
    assert!(!v.poisoned.is_empty());
    assert_eq!(
        v.blocked, v.poisoned,
        "only the poisoned queues are blocked"
    );
    let errors = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!errors.contains("panicked"), "a worker panicked:\n{errors}");
    if entries {
        let e = entries_table(store);
        assert!(e.source > 0, "no deposits or withdrawals in the log");
        assert_eq!(
            (e.rows, e.distinct),
            (e.source, e.source),
            "the entries table must hold each of the {} deposits and withdrawals exactly once",
            e.source
        );
    }
}

/// What the `entries` projection's table holds, against the log.
pub struct Entries {
    /// Rows in the table.
    pub rows: u64,
    /// Distinct event ids in the table.
    pub distinct: u64,
    /// Deposits and withdrawals in the log.
    pub source: u64,
}

/// Reads `act_bank_entries` with a query of its own (not the handler's
/// counters), and counts the deposits and withdrawals of the log.
pub fn entries_table(url: &str) -> Entries {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open(url).await;
        let source = store
            .query(&act::Query::new().names(["Deposited", "Withdrawn"]))
            .await
            .unwrap()
            .len() as u64;
        let (rows, distinct) = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            let c = rusqlite::Connection::open(path).unwrap();
            c.query_row(
                "SELECT count(*), count(DISTINCT event) FROM act_bank_entries",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .unwrap()
        } else {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let schema = query
                .split('&')
                .find_map(|p| p.strip_prefix("schema="))
                .unwrap_or("act");
            let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*), count(DISTINCT event) FROM {schema}.act_bank_entries"
                    ),
                    &[],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
        };
        Entries {
            rows,
            distinct,
            source,
        }
    })
}

/// A worker frozen with SIGSTOP while it holds leases, past their expiry;
/// another worker takes its queues; the frozen one is resumed: it is told its
/// leases are lost and its settlements are rejected, and the log shows
/// nothing duplicated or skipped.
pub fn worker_paused_past_its_lease(store: &str, log: &Path) {
    let d = demo(store, 9, 3_000).wait_with_output().unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let mut paused = Worker::start(store, "paused", log);
    paused.started();
    wait_until(
        "the first worker to hold leases",
        Duration::from_secs(60),
        || lease_owners(store).iter().any(|o| o == "paused"),
    );
    signal(&paused.child, "-STOP");
    let mut other = Worker::start(store, "other", log);
    other.started();
    // Its 2 s leases expire on the store's clock; the other worker takes over.
    wait_until(
        "the other worker to take over",
        Duration::from_secs(60),
        || {
            lease_owners(store).iter().any(|o| o == "other")
                && !lease_owners(store).iter().any(|o| o == "paused")
        },
    );
    signal(&paused.child, "-CONT");
    let paused_stats = paused.stop()["stats"].clone();
    let other_stats = other.stop()["stats"].clone();
    assert!(
        other_stats["claims"].as_u64() > Some(0),
        "the other worker took over: {other_stats}"
    );
    assert!(
        paused_stats["lost"].as_u64() > Some(0) && paused_stats["rejected"].as_u64() > Some(0),
        "the resumed worker's writes after its lease were refused: {paused_stats}"
    );
    run(&["settle", "--store", store, "--lease", "2"]);
    let v = verify(store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 3_000);
    assert_eq!(v.totaled, 3_000, "every event totaled exactly once");
    assert_eq!(v.blocked, v.poisoned);
    let errors = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!errors.contains("panicked"), "a worker panicked:\n{errors}");
}

/// The PostgreSQL server of the tests (override with ACT_TEST_POSTGRES).
pub fn pg_server() -> String {
    std::env::var("ACT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL store URL in a fresh schema, and the guard that drops it.
pub fn pg_store(what: &str) -> (String, DropSchema) {
    let schema = format!("act_cli_{what}_{:016x}", fastrand::u64(..));
    (
        format!("{}?schema={schema}", pg_server()),
        DropSchema(schema),
    )
}

/// Drops a test's schema when the test ends.
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let out = Command::new("psql")
            .args([
                &pg_server(),
                "-qc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "could not drop {}: {}",
                    self.0,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}
