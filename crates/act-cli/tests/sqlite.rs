//! The `act` binary on SQLite, as operators run it: several worker
//! processes on one file killed with SIGKILL mid-run, unblock after a fix,
//! reset and replay, the default store, and the documented JSON shapes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

fn act() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_act"));
    c.env_remove("ACT_STORE").env("ACT_LOG", "error");
    c
}

fn url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("act.db").display())
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
    let out = w.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"));
    assert_eq!(v["event"], "started");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn verify(path: PathBuf) -> act_bank::Verdict {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = act_sqlite::SqliteStore::open(path).await.unwrap();
        act_bank::verify(&store).await.unwrap()
    })
}

#[test]
fn workers_killed_with_sigkill_mid_run_lose_and_reorder_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = url(dir.path());
    let log = dir.path().join("workers.log");
    run(&["status", "--store", &store]); // creates the file
    let mut workers: Vec<Child> = (0..3)
        .map(|i| worker(&store, &format!("w{i}"), &log))
        .collect();
    let mut demo = act()
        .args([
            "demo",
            "--store",
            &store,
            "--no-settle",
            "--events",
            "20000",
            "--accounts",
            "100",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut kills = 0;
    let mut demo_done = None;
    // Kill a worker every few hundred milliseconds while the demo appends and
    // the workers deliver, then twice more after the appends are done.
    while kills < 6 || demo_done.is_none() || kills < 8 {
        std::thread::sleep(Duration::from_millis(rng.u64(200..700)));
        let i = kills % workers.len();
        workers[i].kill().unwrap();
        workers[i].wait().unwrap();
        workers[i] = worker(&store, &format!("w{i}-{kills}"), &log);
        kills += 1;
        if demo_done.is_none() {
            demo_done = demo.try_wait().unwrap();
        }
    }
    let out = demo.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "demo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json_lines(&out).remove(0);
    assert_eq!(summary["events"], 20_000);
    // The survivors stop gracefully on SIGTERM: exit 0.
    for w in &mut workers {
        started(w);
        signal(w, "-TERM");
    }
    for mut w in workers {
        let status = w.wait().unwrap();
        assert!(
            status.success(),
            "a worker did not shut down cleanly: {status:?}"
        );
    }
    let before = verify(dir.path().join("act.db"));
    assert!(
        before.totaled > 0,
        "the workers delivered before the final settle"
    );
    run(&["settle", "--store", &store, "--lease", "2"]);
    let v = verify(dir.path().join("act.db"));
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 20_000);
    assert_eq!(v.totaled, 20_000);
    assert_eq!(v.blocked.len(), 2, "the two poisoned audit queues");
    assert_eq!(v.blocked, v.poisoned, "nothing else is blocked");
    let errors = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!errors.contains("panicked"), "a worker panicked:\n{errors}");
}

#[test]
fn unblock_after_the_cause_is_removed_lets_the_queue_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = url(dir.path());
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "1500",
        "--accounts",
        "15",
    ]);
    let blocked: Vec<String> = json_lines(&run(&["blocked", "--store", &store, "--json"]))
        .iter()
        .map(|q| q["stream"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(blocked.len(), 2);
    let mut args = vec!["unblock", "--store", &store, "--json"];
    args.extend(blocked.iter().map(String::as_str));
    // Unblocked without a fix: the poison blocks the queue again.
    run(&args);
    run(&["settle", "--store", &store]);
    let v = verify(dir.path().join("act.db"));
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.blocked, blocked);
    // With the fix deployed, unblock lets each queue finish from the event that failed.
    let outcomes = json_lines(&run(&args));
    assert!(
        outcomes.iter().all(|o| o["outcome"] == "unblocked"),
        "{outcomes:?}"
    );
    run(&["settle", "--store", &store, "--cured"]);
    let v = verify(dir.path().join("act.db"));
    assert!(v.ok(), "{:#?}", v.problems);
    assert!(v.blocked.is_empty());
    assert_eq!(v.cured, blocked);
    assert_eq!(
        v.recorded, 1500,
        "every deposit and withdrawal recorded once"
    );
    // Unknown queues are an operational error; a queue that is not blocked is not.
    let out = act()
        .args(["unblock", "--store", &store, "audit-0", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("audit-0: not blocked") && text.contains("nope: unknown queue"),
        "{text}"
    );
}

#[test]
fn reset_replays_a_queue_and_the_idempotent_handler_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = url(dir.path());
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "1000",
        "--accounts",
        "10",
        "--poison",
        "0",
    ]);
    let before = verify(dir.path().join("act.db"));
    assert!(before.ok());
    let q = json_lines(&run(&[
        "reset", "totals", "--to", "0", "--store", &store, "--json",
    ]))
    .remove(0);
    assert_eq!(
        (q["position"].as_i64(), q["lag"].as_u64()),
        (Some(0), Some(1000))
    );
    let settled = json_lines(&run(&["settle", "--store", &store, "--json"])).remove(0);
    assert_eq!(
        settled["stats"]["reactions"], 1000,
        "the handler ran again for every event"
    );
    let after = verify(dir.path().join("act.db"));
    assert!(after.ok(), "{:#?}", after.problems);
    assert_eq!(after.totaled, before.totaled, "no duplicate Totaled");
    let out = act()
        .args(["reset", "nope", "--to", "0", "--store", &store])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue named `nope`"));
}

#[test]
fn demo_with_no_flags_creates_act_db_here_and_runs_again_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = act().current_dir(dir.path()).arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("appended") && text.contains("check     ok"),
        "{text}"
    );
    assert!(dir.path().join("act.db").exists());
    let again = act()
        .current_dir(dir.path())
        .args(["demo", "--events", "300", "--json"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let summary = json_lines(&again).remove(0);
    assert_eq!(summary["opened"], 0, "the accounts exist already");
    assert_eq!(summary["check"]["ok"], true);
    assert_eq!(summary["check"]["sources"], 10_300);
}

#[test]
fn status_and_events_print_the_documented_json_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let store = url(dir.path());
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "200",
        "--accounts",
        "5",
    ]);
    let lines = json_lines(&run(&["status", "--store", &store, "--json"]));
    let (rows, totals) = lines.split_at(lines.len() - 1);
    assert_eq!(rows.len(), 6, "five audit queues and totals");
    for r in rows {
        for field in [
            "stream",
            "position",
            "head",
            "lag",
            "retries",
            "blocked",
            "error",
            "retry_at",
            "lease_owner",
            "lease_expires",
        ] {
            assert!(r.get(field).is_some(), "status row lacks `{field}`: {r}");
        }
    }
    assert_eq!(totals[0]["totals"]["queues"], 6);
    assert_eq!(totals[0]["totals"]["blocked"], 2);
    let events = json_lines(&run(&[
        "events",
        "--store",
        &store,
        "--stream",
        "account-*",
        "--limit",
        "7",
        "--json",
    ]));
    assert_eq!(events.len(), 7);
    for e in &events {
        for field in ["id", "stream", "version", "name", "data", "meta"] {
            assert!(e.get(field).is_some(), "event lacks `{field}`: {e}");
        }
        assert!(e["stream"].as_str().unwrap().starts_with("account-"));
        assert!(e["meta"]["created"].is_string() && e["meta"]["correlation"].is_string());
    }
    let after = events[6]["id"].as_i64().unwrap().to_string();
    let next = json_lines(&run(&[
        "events", "--store", &store, "--after", &after, "--limit", "1", "--json",
    ]));
    assert_eq!(
        next[0]["id"].as_i64().unwrap(),
        events[6]["id"].as_i64().unwrap() + 1
    );
    let table = String::from_utf8_lossy(&run(&["status", "--store", &store]).stdout).to_string();
    assert!(
        table.starts_with("STREAM") && table.contains("6 queues"),
        "{table}"
    );
}

#[test]
fn events_follow_prints_commits_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = url(dir.path());
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "10",
        "--accounts",
        "2",
        "--poison",
        "0",
    ]);
    let mut follow = act()
        .args([
            "events",
            "--store",
            &store,
            "--follow",
            "--json",
            "--stream",
            "account-*",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = 0;
    while seen < 12 {
        lines.next().unwrap().unwrap();
        seen += 1;
    }
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "5",
        "--accounts",
        "2",
        "--no-settle",
    ]);
    while seen < 17 {
        let l = lines.next().expect("follow ended early").unwrap();
        let e: Value = serde_json::from_str(&l).unwrap();
        assert!(e["stream"].as_str().unwrap().starts_with("account-"));
        seen += 1;
    }
    signal(&follow, "-INT");
    assert!(follow.wait().unwrap().success(), "follow exits 0 on SIGINT");
}
