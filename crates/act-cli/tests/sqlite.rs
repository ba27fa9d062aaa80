//! The `act` binary on SQLite, as operators run it: several worker
//! processes on one file killed with SIGKILL mid-run, unblock after a fix,
//! reset and replay, the default store, and the documented JSON shapes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{act, json_lines, run, signal, workers_killed_mid_run};
use serde_json::Value;

fn url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("act.db").display())
}

fn verify(path: PathBuf) -> act_bank::Verdict {
    common::verify(&format!("sqlite://{}", path.display()))
}

#[test]
fn workers_killed_with_sigkill_mid_run_lose_and_reorder_nothing() {
    let dir = tempfile::tempdir().unwrap();
    workers_killed_mid_run(
        &url(dir.path()),
        &[42],
        10_000,
        &dir.path().join("workers.log"),
        true,
    );
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("audit-0: not blocked") && !text.contains("nope"),
        "{text}"
    );
    assert!(err.contains("no queue named `nope`"), "{err}");
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
    // The queue is emptied and replayed from the log by the next broker.
    assert_eq!(
        (
            q["position"].as_i64(),
            q["lag"].as_u64(),
            q["replay"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );
    // Every reaction that may target it: `totals` (its static queue) and
    // `audit` (dynamic; its replay finds nothing for this queue).
    assert_eq!(q["replaying"], serde_json::json!(["audit", "totals"]));
    let settled = json_lines(&run(&["settle", "--store", &store, "--json"])).remove(0);
    assert_eq!(
        settled["stats"]["reactions"], 1000,
        "the handler ran again for every event"
    );
    let after = verify(dir.path().join("act.db"));
    assert!(after.ok(), "{:#?}", after.problems);
    assert_eq!(after.totaled, before.totaled, "no duplicate Totaled");
    // A typo is an error, with the way to replay into a new queue.
    let out = act()
        .args(["reset", "nope", "--to", "0", "--store", &store])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no queue named `nope`") && err.contains("--new"),
        "{err}"
    );
    assert!(json_lines(&run(&[
        "status", "--store", &store, "--stream", "nope", "--json"
    ]))
    .iter()
    .all(|r| r.get("stream").is_none()));
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
