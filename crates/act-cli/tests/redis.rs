//! The `act` binary on Redis, as operators run it: several worker processes
//! on one prefix, one killed with SIGKILL again and again while four demo
//! processes append; and a worker frozen with SIGSTOP past its lease while
//! another takes over. Each test uses its own key prefix on the server at
//! 127.0.0.1:6379 and deletes its keys at the end.

mod common;

use std::time::Duration;

use common::{act, json_lines, run, verify, worker_paused_past_its_lease, workers_killed_mid_run};

const SERVER: &str = "redis://127.0.0.1:6379/0";

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

#[test]
fn workers_killed_with_sigkill_while_four_demos_append_lose_and_reorder_nothing() {
    let (store, _cleanup) = store("kill");
    let dir = tempfile::tempdir().unwrap();
    workers_killed_mid_run(
        &store,
        &[5, 6, 7, 8],
        2_500,
        &dir.path().join("workers.log"),
        false,
    );
}

#[test]
fn a_worker_paused_past_its_lease_cannot_ack_what_another_took_over() {
    let (store, _cleanup) = store("pause");
    let dir = tempfile::tempdir().unwrap();
    worker_paused_past_its_lease(&store, &dir.path().join("workers.log"));
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
