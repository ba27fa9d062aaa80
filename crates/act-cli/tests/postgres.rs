//! The `act` binary on PostgreSQL, as operators run it on several machines:
//! three workers while four demo processes append 10,000 events, one worker
//! SIGKILLed again and again; a worker frozen past its lease while another
//! takes over. Each test uses its own schema on the server at 127.0.0.1:5432
//! (override with ACT_TEST_POSTGRES), dropped at the end.

mod common;

use std::sync::Mutex;

/// One test at a time: each runs a dozen processes with their own pools,
/// and together they would exceed the server's 100 connections.
static SERVER: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

use common::{
    json_lines, pg_store as store, run, verify, worker_paused_past_its_lease,
    workers_killed_mid_run,
};

#[test]
fn workers_killed_with_sigkill_while_four_demos_append_lose_and_reorder_nothing() {
    let _server = one_at_a_time();
    let (store, _drop) = store("kill");
    let dir = tempfile::tempdir().unwrap();
    workers_killed_mid_run(
        &store,
        &[1, 2, 3, 4],
        2_500,
        &dir.path().join("workers.log"),
        true,
    );
}

#[test]
fn a_worker_paused_past_its_lease_cannot_ack_what_another_took_over() {
    let _server = one_at_a_time();
    let (store, _drop) = store("pause");
    let dir = tempfile::tempdir().unwrap();
    worker_paused_past_its_lease(&store, &dir.path().join("workers.log"));
}

#[test]
fn demo_status_and_reset_run_on_postgres() {
    let _server = one_at_a_time();
    let (store, _drop) = store("demo");
    let summary = json_lines(&run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "500",
        "--accounts",
        "5",
        "--json",
    ]))
    .remove(0);
    assert_eq!(summary["check"]["ok"], true, "{summary}");
    run(&["reset", "totals", "--to", "0", "--store", &store]);
    run(&["settle", "--store", &store]);
    let v = verify(&store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.totaled, 500, "the replay added no duplicate Totaled");
}
