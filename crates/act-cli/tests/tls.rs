//! A worker told to use TLS with a server that does not speak it stops at
//! once with one `error: …` line and exit code 1, instead of waiting for
//! the store as it does through an outage (`open_patiently` retries only
//! what waiting can cure). Each test starts its own plaintext server
//! ([`PrivateRedis`], [`PrivatePostgres`]); none touches the machine's own.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use act_testservers::postgres::PrivatePostgres;
use act_testservers::redis::PrivateRedis;
use common::act;

/// Far more than a failing open takes (a few seconds), far less than the
/// five minutes a worker waits for an unreachable store.
const EXITS_WITHIN: Duration = Duration::from_secs(90);

/// Runs `act worker --store URL` and waits for it to exit by itself.
fn worker_exits(url: &str) -> Output {
    let mut child = act()
        .args(["worker", "--store", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start act worker");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("poll act worker").is_some() {
            return child.wait_with_output().expect("the worker's output");
        }
        if started.elapsed() > EXITS_WITHIN {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the worker's output");
            panic!(
                "act worker --store {url} was still running after {EXITS_WITHIN:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exit code 1 and exactly one line on stderr, `error: …` containing `says`.
fn fails_with_one_line(out: &Output, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(says),
        "{err}"
    );
}

#[test]
fn a_rediss_worker_on_a_plaintext_port_stops_at_once() {
    let redis = PrivateRedis::start(&[]);
    let out = worker_exits(&format!(
        "rediss://127.0.0.1:{}/0?connect_timeout_ms=2000",
        redis.port()
    ));
    fails_with_one_line(&out, "TLS port");
}

#[test]
fn a_postgres_worker_requiring_tls_of_a_server_without_it_stops_at_once() {
    let pg = PrivatePostgres::start();
    let out = worker_exits(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require&schema=tls_cli",
        pg.port()
    ));
    fails_with_one_line(&out, "server does not support TLS");
}
