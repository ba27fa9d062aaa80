//! Workers on a store that goes away, with the real `act` binary: a private
//! PostgreSQL restarted, stopped for 15 s (with 30 s leases), and made
//! read-only then writable again; a private Redis killed and restarted.
//! Each test owns its server (started on a free port in a temporary
//! directory) and never touches the machine's own. Each asserts, from the
//! workers' own counters and logs, that their failed store calls stayed
//! under the documented bound (10 per second per worker), that they
//! delivered again once the store was back, and, from the log, that nothing
//! was lost, doubled or reordered.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use act_testservers::postgres::PrivatePostgres;
use act_testservers::redis::PrivateRedis;
use common::{act, create, json_lines, run, verify, wait_until, Worker};

/// One outage at a time: each runs its own server and a few workers, which
/// is all two cores carry.
static ONE: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The documented bound on a broker's failed store calls while the store
/// is down (docs/operations.md, "When the store is down").
const MAX_FAILED_CALLS_PER_S: f64 = 10.0;

fn append(store: &str, events: usize, seed: u64) {
    let out = act()
        .args([
            "demo",
            "--store",
            store,
            "--no-settle",
            "--events",
            &events.to_string(),
            "--accounts",
            "20",
            "--poison",
            "0",
        ])
        .args(["--seed", &seed.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Totaled` receipts so far (the totals stream also holds snapshots).
fn totaled(store: &str) -> usize {
    json_lines(&run(&[
        "events", "--store", store, "--stream", "totals", "--json",
    ]))
    .iter()
    .filter(|e| e["name"] == "Totaled")
    .count()
}

/// Runs `outage` while two workers deliver `events` events, then checks the
/// bound, the recovery and the log.
fn through_an_outage(
    store: &str,
    lease: &str,
    events: usize,
    log: &Path,
    outage: impl FnOnce() -> Duration,
) {
    create(store);
    append(store, events, 1);
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start_leased(store, &format!("w{i}"), log, lease, &[]))
        .collect();
    for w in &mut workers {
        w.started();
    }
    wait_until(
        "the workers to deliver before the outage",
        Duration::from_secs(120),
        || totaled(store) > 200,
    );
    let started = Instant::now();
    let down = outage();
    let outage_s = started.elapsed().as_secs_f64();
    // Delivery resumes on its own: more events appended after the outage
    // are delivered by the same workers.
    append(store, 200, 2);
    let back = Instant::now();
    wait_until(
        "the workers to deliver again after the outage",
        Duration::from_secs(180),
        || totaled(store) == events + 200,
    );
    let recovered_s = back.elapsed().as_secs_f64();
    let mut errors = Vec::new();
    for w in workers {
        let stats = w.stop()["stats"].clone();
        errors.push(stats["errors"].as_u64().unwrap_or(0));
    }
    // Every failed call happened while the store was away (plus the pass in
    // flight when it went): at most the bound over the outage, per worker.
    let bound = MAX_FAILED_CALLS_PER_S * outage_s + 2.0;
    for (i, e) in errors.iter().enumerate() {
        assert!(
            (*e as f64) <= bound,
            "worker {i} made {e} failed store calls in a {outage_s:.1} s outage (bound {bound:.0})"
        );
    }
    assert!(
        errors.iter().any(|e| *e > 0),
        "the outage was noticed (down {down:?}): {errors:?}"
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let warnings = text
        .lines()
        .filter(|l| l.contains("store unavailable"))
        .count() as u64;
    assert!(
        warnings <= errors.iter().sum::<u64>(),
        "one log line per failed call at most: {warnings} lines"
    );
    assert!(!text.contains("panicked"), "a worker panicked:\n{text}");
    eprintln!("outage {outage_s:.1}s: failed calls per worker {errors:?}; delivered again within {recovered_s:.1}s");
    let v = verify(store);
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(
        v.totaled as usize,
        events + 200,
        "every event totaled exactly once"
    );
    assert!(
        v.blocked.is_empty(),
        "an outage never blocks a queue: {:?}",
        v.blocked
    );
}

#[test]
fn workers_ride_out_a_postgres_restart() {
    let _one = one_at_a_time();
    let pg = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{}?schema=act", pg.url("postgres"));
    through_an_outage(&store, "2", 4000, &dir.path().join("workers.log"), || {
        let t = Instant::now();
        pg.restart();
        t.elapsed()
    });
}

#[test]
fn workers_ride_out_postgres_stopped_for_15_s_with_30_s_leases() {
    let _one = one_at_a_time();
    let pg = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{}?schema=act", pg.url("postgres"));
    through_an_outage(&store, "30", 4000, &dir.path().join("workers.log"), || {
        pg.stop_immediate();
        std::thread::sleep(Duration::from_secs(15));
        pg.start_again();
        Duration::from_secs(15)
    });
}

#[test]
fn workers_resume_after_postgres_was_read_only_and_status_works_meanwhile() {
    let _one = one_at_a_time();
    let pg = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{}?schema=act", pg.url("postgres"));
    let status_store = store.clone();
    through_an_outage(&store, "2", 4000, &dir.path().join("workers.log"), || {
        pg.set_read_only(true);
        std::thread::sleep(Duration::from_secs(3));
        // Read-only commands work against a read-only database.
        let rows = json_lines(&run(&["status", "--store", &status_store, "--json"]));
        assert!(rows.iter().any(|r| r.get("totals").is_some()), "{rows:?}");
        run(&["reactions", "--store", &status_store]);
        std::thread::sleep(Duration::from_secs(3));
        pg.set_read_only(false);
        Duration::from_secs(6)
    });
}

#[test]
fn workers_ride_out_a_redis_kill_and_restart() {
    let _one = one_at_a_time();
    // Every acknowledged write on disk before the reply, so a kill loses
    // nothing (docs/redis.md: durability is Redis's persistence setting).
    let mut redis = PrivateRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{}?prefix=outage", redis.url());
    through_an_outage(&store, "2", 4000, &dir.path().join("workers.log"), || {
        redis.kill();
        std::thread::sleep(Duration::from_secs(5));
        redis.start_again();
        Duration::from_secs(5)
    });
}
