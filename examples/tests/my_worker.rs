//! `my-worker`, a user's binary built on `act_cli::Program`, as its user runs
//! it: greet visitors, start the worker, see the welcomes in the log, stop it
//! with SIGTERM, and find its queues caught up; its usage and store errors
//! exit as `act`'s do. Each test has its own SQLite file in a temporary
//! directory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A guard against hangs, not a timing assertion: a busy 2-core machine
/// stays far below it.
const PATIENCE: Duration = Duration::from_secs(60);

/// The binary, with no store from the environment and quiet logs.
fn my_worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_my-worker"));
    c.env_remove("ACT_STORE").env("ACT_LOG", "error");
    c
}

/// Runs `my-worker args…` and asserts it succeeded.
fn run(args: &[&str]) -> Output {
    let out = my_worker().args(args).output().expect("run my-worker");
    assert!(
        out.status.success(),
        "my-worker {args:?} failed ({:?}): {}",
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

/// A child process killed and reaped when the test ends, failed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker's stdout, line by line, read on a thread so that every wait
/// for a line is bounded.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line the worker prints, as JSON.
fn next_line(lines: &Receiver<String>, what: &str) -> Value {
    let line = lines
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("the worker did not print its {what} line: {e}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"))
}

#[test]
fn the_worker_welcomes_greeted_visitors_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("visitors.db").display());
    for name in ["ada", "grace"] {
        run(&["greet", name, "--store", &store]);
    }

    let mut worker = Reaped(
        my_worker()
            .args(["worker", "--store", &store, "--json", "--poll-ms", "200"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the worker"),
    );
    let worker = &mut worker.0;
    let lines = lines_of(worker);
    assert_eq!(next_line(&lines, "started")["event"], "started");

    let start = Instant::now();
    loop {
        let events = json_lines(&run(&["events", "--store", &store, "--json"]));
        let mut welcomed: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "Welcomed")
            .filter_map(|e| e["stream"].as_str())
            .collect();
        welcomed.sort();
        if welcomed == ["visitor-ada", "visitor-grace"] {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the worker did not welcome both visitors within {PATIENCE:?}; the log: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success(), "kill -TERM failed");
    let stopped = next_line(&lines, "stopped");
    assert_eq!(stopped["event"], "stopped", "{stopped}");
    assert!(
        stopped["stats"]["reactions"].as_u64() >= Some(2),
        "both welcomes were this worker's: {stopped}"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the worker did not exit after its stopped line"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a graceful shutdown exits 0");

    let rows = json_lines(&run(&["status", "--store", &store, "--json"]));
    let queues: Vec<(&str, u64)> = rows
        .iter()
        .filter_map(|r| Some((r["stream"].as_str()?, r["lag"].as_u64()?)))
        .collect();
    assert_eq!(queues, [("visitor-ada", 0), ("visitor-grace", 0)]);
    let text = String::from_utf8_lossy(&run(&["status", "--store", &store]).stdout).to_string();
    assert!(text.contains("2 queues, lag 0"), "{text}");
}

#[test]
fn the_act_binarys_bank_commands_are_not_a_users() {
    let out = my_worker().args(["demo"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "demo is a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand 'demo'"), "{err}");
}

#[test]
fn an_unknown_store_is_one_clear_line_and_exit_code_1() {
    let out = my_worker()
        .args(["status", "--store", "nosuch://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("error: unknown store URL `nosuch://x`"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
