//! `act worker --metrics ADDR`: the Prometheus exposition, scraped over HTTP
//! while the worker drains and parsed with a real parser, agrees with the
//! log (delivered = reactions in the log, blocked = blocked queues), and the
//! health endpoints answer.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{act, json_lines, run, signal, wait_until};
use serde_json::Value;

/// GET `path` from `addr`: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, body.to_string())
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("the exposition does not parse ({e}):\n{body}"))
}

/// Every sample of `name`, by its `reaction` label ("" without one).
fn values(scrape: &prometheus_parse::Scrape, name: &str) -> BTreeMap<String, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name} is not a counter or gauge"),
            };
            (s.labels.get("reaction").unwrap_or("").to_string(), v)
        })
        .collect()
}

fn status(store: &str) -> Vec<Value> {
    json_lines(&run(&["status", "--store", store, "--json"]))
}

#[test]
fn the_exporter_agrees_with_the_log_while_a_worker_drains() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("act.db").display());
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "600",
        "--accounts",
        "12",
        "--poison",
        "2",
        "--fail-share",
        "0.05",
        "--no-settle",
        "--json",
    ]);
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let mut worker = act()
        .env("ACT_LOG", "warn")
        .args([
            "worker",
            "--store",
            &store,
            "--json",
            "--poll-ms",
            "200",
            "--name",
            "m1",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn worker");
    let mut out = BufReader::new(worker.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let started: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("worker said {line:?} ({e}); see its log"));
    assert_eq!(started["event"], "started");
    let addr = started["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics address in {started}"))
        .to_string();

    // While it drains: the endpoints answer and the exposition parses.
    let early = scrape(&addr);
    let early_at = std::time::Instant::now();
    assert!(
        early.docs.contains_key("act_reactions_delivered_total"),
        "the metrics are described: {:?}",
        early.docs.keys().collect::<Vec<_>>()
    );
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/nope").0, 404);

    wait_until(
        "the worker to deliver everything but the blocked queues",
        Duration::from_secs(120),
        || {
            let lines = status(&store);
            let Some((totals, rows)) = lines.split_last() else {
                return false;
            };
            let t = &totals["totals"];
            t["correlated"] == true
                && t["reactions"].as_u64() == Some(2)
                && t["retrying"] == 0
                && t["blocked"] == 2
                && rows.iter().all(|q| q["lag"] == 0 || q["blocked"] == true)
        },
    );
    let (code, body) = get(&addr, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // The store-wide gauges are sampled at a scrape at most once a second
    // (docs/production.md): scrape when the early scrape's sample is over a
    // second old, so this one samples the store as it is now.
    let fresh = early_at + Duration::from_millis(1100);
    std::thread::sleep(fresh.saturating_duration_since(std::time::Instant::now()));
    let last = scrape(&addr);

    // Delivered = the reactions' own events in the log.
    let events = json_lines(&run(&["events", "--store", &store, "--json"]));
    let count = |name: &str| events.iter().filter(|e| e["name"] == name).count() as f64;
    let delivered = values(&last, "act_reactions_delivered_total");
    // What the worker logged (warnings: rejected settlements, store
    // errors), to tell a redelivery from a miscount when these differ.
    let worker_log = || std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    assert_eq!(
        delivered.get("audit"),
        Some(&count("Recorded")),
        "{delivered:?}; the worker logged:\n{}",
        worker_log()
    );
    assert_eq!(
        delivered.get("totals"),
        Some(&count("Totaled")),
        "{delivered:?}; the worker logged:\n{}",
        worker_log()
    );
    assert!(count("Totaled") > 500.0, "the workload delivered little");

    // Blocked = the blocked queues.
    let blocked = json_lines(&run(&["blocked", "--store", &store, "--json"]));
    let blocked_queues = blocked.iter().filter(|b| b.get("stream").is_some()).count() as f64;
    assert_eq!(blocked_queues, 2.0, "{blocked:?}");
    assert_eq!(
        values(&last, "act_queues_blocked").get(""),
        Some(&blocked_queues)
    );
    let blocks: f64 = values(&last, "act_blocks_total").values().sum();
    assert_eq!(blocks, blocked_queues);
    // Retries happened (fail-share), and the handler histogram counted every call.
    let retries: f64 = values(&last, "act_retries_total").values().sum();
    assert!(retries > 0.0, "no retries recorded");
    let calls: f64 = values(&last, "act_handler_duration_seconds_count")
        .values()
        .sum();
    let failures: f64 = values(&last, "act_handler_failures_total").values().sum();
    assert_eq!(
        calls,
        count("Recorded") + count("Totaled") + failures,
        "one duration per handler call"
    );
    // Lag per reaction: the static `totals` queue is caught up; what the
    // dynamic `audit` has pending is what its two blocked queues hold.
    assert_eq!(values(&last, "act_reaction_lag").get("totals"), Some(&0.0));
    let held: f64 = blocked
        .iter()
        .filter_map(|b| b.get("lag").and_then(Value::as_f64))
        .sum();
    assert!(
        held >= 2.0,
        "each blocked queue holds its event: {blocked:?}"
    );
    assert_eq!(values(&last, "act_reaction_lag").get("audit"), Some(&held));
    assert_eq!(values(&last, "act_correlation_lag").get(""), Some(&0.0));

    signal(&worker, "-TERM");
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let status = worker.wait().unwrap();
    assert!(status.success(), "worker exit: {status:?}");
    let stopped: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(stopped["event"], "stopped");
    assert_eq!(
        stopped["stats"]["reactions"].as_f64(),
        Some(count("Recorded") + count("Totaled"))
    );
}

#[test]
fn a_metrics_address_in_use_is_a_clear_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("act.db").display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = act()
        .args(["worker", "--store", &store, "--metrics", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} for metrics")) && err.lines().count() == 1,
        "{err}"
    );
    let out = act()
        .args(["worker", "--store", &store, "--metrics", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad address is a usage error");
}
