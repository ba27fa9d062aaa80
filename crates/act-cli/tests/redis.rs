//! The `act` binary on Redis, as operators run it: several worker processes
//! on one prefix, one killed with SIGKILL again and again while four demo
//! processes append; and a worker frozen with SIGSTOP past its lease while
//! another takes over. Each test uses its own key prefix on the server at
//! 127.0.0.1:6379 and deletes its keys at the end.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const SERVER: &str = "redis://127.0.0.1:6379/0";

fn act() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_act"));
    c.env_remove("ACT_STORE").env("ACT_LOG", "error");
    c
}

/// A store URL under a fresh prefix, and the guard that deletes its keys.
fn store(what: &str) -> (String, Cleanup) {
    let prefix = format!("cli-{what}-{:016x}", fastrand::u64(..));
    (
        format!("{SERVER}?prefix={prefix}"),
        Cleanup {
            pattern: format!("{{{prefix}}}:*"),
        },
    )
}

/// Deletes the test's keys when dropped (SCAN is fine in test cleanup).
struct Cleanup {
    pattern: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let clean = || -> redis::RedisResult<()> {
            let mut c =
                redis::Client::open(SERVER)?.get_connection_with_timeout(Duration::from_secs(5))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&self.pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut c)?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK").arg(&keys).exec(&mut c)?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        };
        if let Err(e) = clean() {
            eprintln!("could not delete {}: {e}", self.pattern);
        }
    }
}

fn run(args: &[&str]) -> Output {
    let out = act().args(args).output().expect("run act");
    assert!(
        out.status.success(),
        "act {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn worker(store: &str, name: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    act()
        .args([
            "worker",
            "--store",
            store,
            "--lease",
            "2",
            "--poll-ms",
            "200",
            "--json",
            "--name",
            name,
        ])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn worker")
}

/// Waits for a worker's `started` line: from then on it handles SIGTERM.
fn started(w: &mut Child) {
    let line = read_line(w);
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"));
    assert_eq!(v["event"], "started");
}

fn read_line(w: &mut Child) -> String {
    let out = w.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    line
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM, then the worker's `stopped` line after a clean exit.
fn stop(mut w: Child) -> Value {
    signal(&w, "-TERM");
    let line = read_line(&mut w);
    let status = w.wait().unwrap();
    assert!(
        status.success(),
        "a worker did not shut down cleanly: {status:?}"
    );
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"));
    assert_eq!(v["event"], "stopped");
    v
}

fn verify(url: &str) -> act_bank::Verdict {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = act_redis::RedisStore::open(url).await.unwrap();
        act_bank::verify(&store).await.unwrap()
    })
}

fn demo(store: &str, seed: u64, events: usize) -> Child {
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

#[test]
fn workers_killed_with_sigkill_while_four_demos_append_lose_and_reorder_nothing() {
    let (store, _cleanup) = store("kill");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    run(&["status", "--store", &store]); // writes the schema marker
    let mut workers: Vec<Child> = (0..3)
        .map(|i| worker(&store, &format!("w{i}"), &log))
        .collect();
    let mut demos: Vec<Child> = [5, 6, 7, 8]
        .into_iter()
        .map(|seed| demo(&store, seed, 5_000))
        .collect();
    let mut rng = fastrand::Rng::with_seed(13);
    let mut kills = 0;
    // Kill worker 0 every few hundred milliseconds while the demos append and
    // the workers deliver, and twice more after the appends are done.
    let mut after_demos = 0;
    while after_demos < 2 || kills < 6 {
        std::thread::sleep(Duration::from_millis(rng.u64(200..700)));
        workers[0].kill().unwrap();
        workers[0].wait().unwrap();
        workers[0] = worker(&store, &format!("w0-{kills}"), &log);
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
        assert_eq!(json_lines(&out)[0]["events"], 5_000);
    }
    // The survivors stop gracefully on SIGTERM: exit 0.
    for w in &mut workers {
        started(w);
    }
    for w in workers {
        stop(w);
    }
    let before = verify(&store);
    assert!(
        before.totaled > 0,
        "the workers delivered before the final settle"
    );
    run(&["settle", "--store", &store, "--lease", "2"]);
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 20_000);
    assert_eq!(v.totaled, 20_000);
    assert!(!v.poisoned.is_empty());
    assert_eq!(v.blocked, v.poisoned, "only poisoned queues are blocked");
    let errors = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!errors.contains("panicked"), "a worker panicked:\n{errors}");
}

#[test]
fn a_worker_paused_past_its_lease_cannot_ack_what_another_took_over() {
    let (store, _cleanup) = store("pause");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    let d = demo(&store, 9, 3_000).wait_with_output().unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let mut paused = worker(&store, "paused", &log);
    started(&mut paused);
    // Let it claim and start delivering, then freeze it mid-batch.
    std::thread::sleep(Duration::from_millis(600));
    signal(&paused, "-STOP");
    let mut other = worker(&store, "other", &log);
    started(&mut other);
    // Past the paused worker's 2 s leases: the other one takes its queues.
    std::thread::sleep(Duration::from_secs(4));
    signal(&paused, "-CONT");
    std::thread::sleep(Duration::from_secs(2));
    let paused_stats = stop(paused)["stats"].clone();
    let other_stats = stop(other)["stats"].clone();
    assert!(
        other_stats["claims"].as_u64() > Some(0),
        "the other worker took over: {other_stats}"
    );
    // Resumed, it learns its leases are gone and its settlements are refused.
    assert!(
        paused_stats["lost"].as_u64() > Some(0) && paused_stats["rejected"].as_u64() > Some(0),
        "the paused worker's writes after its lease were refused: {paused_stats}"
    );
    run(&["settle", "--store", &store, "--lease", "2"]);
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 3_000);
    assert_eq!(v.totaled, 3_000, "every event totaled exactly once");
    assert_eq!(v.blocked, v.poisoned);
    let errors = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!errors.contains("panicked"), "a worker panicked:\n{errors}");
}

#[test]
fn demo_status_and_reset_run_on_redis() {
    let (store, _cleanup) = store("demo");
    let out = run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "500",
        "--accounts",
        "5",
        "--json",
    ]);
    let summary = json_lines(&out).remove(0);
    assert_eq!(summary["check"]["ok"], true, "{summary}");
    let rows = json_lines(&run(&["status", "--store", &store, "--json"]));
    assert_eq!(rows.last().unwrap()["totals"]["queues"], 6);
    let q = json_lines(&run(&[
        "reset", "totals", "--to", "0", "--store", &store, "--json",
    ]))
    .remove(0);
    assert_eq!(q["position"], 0);
    run(&["settle", "--store", &store]);
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.totaled, 500, "the replay added no duplicate Totaled");
    // An unknown option is an operational error naming it, password hidden.
    let out = act()
        .args(["status", "--store", "redis://:pw@127.0.0.1:6379/0?prefx=x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown option `prefx`") && !err.contains(":pw@"),
        "{err}"
    );
}
