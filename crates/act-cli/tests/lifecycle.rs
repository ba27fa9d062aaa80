//! Reactions over the life of an application, with the real `act` binary:
//! a rolling deploy on PostgreSQL (version 1 workers deliver a running
//! workload, version 2 workers with one more reaction start beside them,
//! version 1 stops), checked from the outside over `act events --json`; and
//! a handler that aborts its process on one poisoned event (SQLite).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{act, create, json_lines, pg_store, run, verify, wait_until, Worker};
use serde_json::Value;

/// Every event of the log, from `act events --json`.
fn events(store: &str) -> Vec<Value> {
    json_lines(&run(&["events", "--store", store, "--json"]))
}

fn count_named(store: &str, stream: &str) -> usize {
    json_lines(&run(&[
        "events", "--store", store, "--stream", stream, "--json",
    ]))
    .len()
}

/// An outside check of the bank's log: every deposit and withdrawal has
/// exactly one receipt from each reaction, in source order: `Recorded` in
/// `audit-N`, `Totaled` in `totals`, `Posted` in `ledger`.
fn check_receipts(log: &[Value]) {
    let mut by_account: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut recorded: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let (mut totaled, mut posted) = (Vec::new(), Vec::new());
    for e in log {
        let stream = e["stream"].as_str().unwrap_or_default();
        let source = e["data"]["source"].as_i64();
        match e["name"].as_str().unwrap_or_default() {
            "Deposited" | "Withdrawn" => {
                let id = e["id"].as_i64().unwrap();
                all.push(id);
                let n = stream.strip_prefix("account-").unwrap_or(stream);
                by_account.entry(n.to_string()).or_default().push(id);
            }
            "Recorded" => {
                let n = stream.strip_prefix("audit-").unwrap_or(stream);
                recorded
                    .entry(n.to_string())
                    .or_default()
                    .push(source.unwrap());
            }
            "Totaled" => totaled.push(source.unwrap()),
            "Posted" => posted.push(source.unwrap()),
            _ => {}
        }
    }
    assert!(!all.is_empty());
    assert_eq!(totaled, all, "totals: every source once, in order");
    assert_eq!(
        posted, all,
        "ledger (added by version 2): every source once, in order, history included"
    );
    for (n, sources) in &by_account {
        assert_eq!(
            recorded.get(n),
            Some(sources),
            "audit-{n}: every source once, in order"
        );
    }
}

/// A rolling deploy: version 1 (audit, totals) delivers while a demo
/// appends; version 2 (plus `ledger`, from the beginning) starts beside it;
/// version 1 stops. Old workers never ack the ledger's work; the new
/// reaction gets the whole history; nothing is lost, doubled or reordered.
#[test]
fn a_rolling_deploy_adds_a_reaction_that_gets_the_history_and_loses_nothing() {
    let (store, _drop) = pg_store("deploy");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    create(&store);
    let mut v1: Vec<Worker> = (0..2)
        .map(|i| Worker::start(&store, &format!("v1-{i}"), &log))
        .collect();
    for w in &mut v1 {
        w.started();
    }
    let demo = act()
        .args([
            "demo",
            "--store",
            &store,
            "--no-settle",
            "--events",
            "6000",
            "--accounts",
            "30",
            "--poison",
            "0",
            "--json",
        ])
        .output();
    // The demo runs to completion while v1 delivers; then a second one
    // appends while both versions run.
    let demo = demo.unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    wait_until("version 1 to deliver", Duration::from_secs(120), || {
        count_named(&store, "totals") > 1000
    });
    let mut v2: Vec<Worker> = (0..2)
        .map(|i| Worker::start_with(&store, &format!("v2-{i}"), &log, &["--ledger"]))
        .collect();
    for w in &mut v2 {
        w.started();
    }
    let second = act()
        .args([
            "demo",
            "--store",
            &store,
            "--no-settle",
            "--events",
            "2000",
            "--accounts",
            "30",
            "--poison",
            "0",
            "--seed",
            "9",
            "--json",
        ])
        .spawn()
        .unwrap();
    wait_until(
        "version 2 to post history",
        Duration::from_secs(120),
        || count_named(&store, "ledger") > 500,
    );
    let reactions = json_lines(&run(&["reactions", "--store", &store, "--json"]));
    assert!(
        reactions.iter().any(|r| r["name"] == "ledger"),
        "{reactions:?}"
    );
    for w in v1 {
        w.stop();
    }
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success());
    run(&["settle", "--store", &store, "--ledger", "--lease", "2"]);
    for w in v2 {
        w.stop();
    }
    check_receipts(&events(&store));
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.posted, 8000);
    // Drained: no reaction has anything pending.
    let reactions = json_lines(&run(&["reactions", "--store", &store, "--json"]));
    assert_eq!(reactions.len(), 3, "{reactions:?}");
    for r in &reactions {
        assert_eq!(r["pending"].as_u64(), Some(0), "{r}");
    }
}

/// A handler that aborts its process on one poisoned deposit: workers die
/// and are restarted; each lease that ends without a settlement counts, so
/// the poisoned queue ends blocked with the lease-loss error after max
/// retries, and every other queue drains.
#[test]
fn a_handler_that_kills_its_process_ends_in_a_blocked_queue_and_the_rest_drains() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("crash.db").display());
    let log = dir.path().join("workers.log");
    let out = act()
        .args([
            "demo",
            "--store",
            &store,
            "--no-settle",
            "--events",
            "3000",
            "--accounts",
            "12",
            "--poison",
            "1",
            // Crashes are the only failures: four attempts, four crashes.
            "--fail-share",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crash = ["--crash-on-poison"];
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start_with(&store, &format!("w{i}"), &log, &crash))
        .collect();
    let mut restarts = 0;
    wait_until(
        "the poisoned queue to block and the rest to drain",
        Duration::from_secs(240),
        || {
            for (i, w) in workers.iter_mut().enumerate() {
                if w.exited() {
                    restarts += 1;
                    *w = Worker::start_with(&store, &format!("w{i}-{restarts}"), &log, &crash);
                }
            }
            let rows = json_lines(&run(&["status", "--store", &store, "--json"]));
            let queues: Vec<&Value> = rows.iter().filter(|r| r.get("stream").is_some()).collect();
            let blocked: Vec<&&Value> = queues.iter().filter(|q| q["blocked"] == true).collect();
            !queues.is_empty()
                && blocked.len() == 1
                && queues.iter().all(|q| q["blocked"] == true || q["lag"] == 0)
        },
    );
    for mut w in workers {
        if !w.exited() {
            w.stop();
        }
    }
    assert!(
        restarts >= 4,
        "one attempt plus three retries, each a crash: {restarts} restarts"
    );
    let blocked = json_lines(&run(&["blocked", "--store", &store, "--json"]));
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    let error = blocked[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expired") && error.contains("without a settlement"),
        "{error}"
    );
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.blocked, v.poisoned);
    assert_eq!(v.totaled, 3000, "every other queue drained");
}
