//! PostgreSQL restarted while workers drain: they recover and finish, losing
//! and doubling nothing. Alone in its own test binary (cargo runs test
//! binaries one at a time), so no other test sees the server go away; it
//! leaves the server up. Needs the rights to run `pg_ctlcluster` (root on the
//! CI machine).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{demo, pg_store, run, verify, wait_until, Worker};

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .is_ok_and(|s| s.success())
}

fn restart_server() {
    let versions = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster in /etc/postgresql");
    let version = versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .expect("a PostgreSQL version");
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .output()
        .expect("run pg_ctlcluster");
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn workers_recover_when_the_server_restarts_mid_drain() {
    let (store, _drop) = pg_store("restart");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    let out = demo(&store, 21, 6_000).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start(&store, &format!("w{i}"), &log))
        .collect();
    for w in &mut workers {
        w.started();
    }
    wait_until(
        "the workers to start delivering",
        Duration::from_secs(120),
        || verify(&store).totaled > 300,
    );
    restart_server();
    wait_until(
        "the server to accept connections again",
        Duration::from_secs(120),
        pg_ready,
    );
    wait_until(
        "the workers to deliver every event",
        Duration::from_secs(300),
        || {
            let v = verify(&store);
            v.totaled == v.sources
        },
    );
    for w in workers {
        w.stop();
    }
    run(&["settle", "--store", &store, "--lease", "2"]);
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 6_000);
    assert_eq!(
        v.blocked, v.poisoned,
        "only the poisoned queues are blocked"
    );
    let errors = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!errors.contains("panicked"), "a worker panicked:\n{errors}");
}
