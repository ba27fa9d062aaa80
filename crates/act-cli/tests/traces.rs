//! `--otlp-endpoint`: the `act` binary sends its spans to an OpenTelemetry
//! collector (a real OTLP/HTTP receiver here), and an action appended by one
//! process and the reactions a worker process runs for it are one trace,
//! joined through the traceparent stored with the event. A bad endpoint is
//! one `error:` line and exit 1; a collector that is not there changes
//! nothing but the log.

#![cfg(feature = "opentelemetry")]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use act_testservers::otlp::{Receiver, Span};
use common::{act, json_lines, run, wait_until, Worker};

fn sqlite(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("act.db").display())
}

/// Appends a few deposits and withdrawals (no failures, no poison),
/// delivery left to a worker.
fn demo(store: &str, extra: &[&str]) {
    let mut args = vec![
        "demo",
        "--store",
        store,
        "--events",
        "3",
        "--accounts",
        "1",
        "--poison",
        "0",
        "--fail-share",
        "0",
        "--no-settle",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args);
}

/// True once every queue is caught up.
fn drained(store: &str) -> bool {
    let lines = json_lines(&run(&["status", "--store", store, "--json"]));
    let Some((totals, rows)) = lines.split_last() else {
        return false;
    };
    totals["totals"]["correlated"] == true && !rows.is_empty() && rows.iter().all(|q| q["lag"] == 0)
}

#[test]
fn an_action_and_the_reactions_a_worker_runs_for_it_are_one_trace() {
    let receiver = Receiver::start();
    let url = format!("{}/", receiver.url());
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    demo(&store, &["--otlp-endpoint", &url]);

    // No export on a timer while the test runs: what arrives from the
    // worker was sent when it shut down.
    let mut worker = Worker::start_env(
        &store,
        "traced",
        &dir.path().join("worker.log"),
        "2",
        &["--otlp-endpoint", &url, "--service-name", "bank-worker"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    worker.started();
    wait_until("the worker to drain", Duration::from_secs(120), || {
        drained(&store)
    });
    assert!(
        !receiver.spans().iter().any(|s| s.name == "act.handle"),
        "nothing is sent before the worker stops"
    );
    // SIGTERM: the worker's last spans are sent before it exits.
    worker.stop();

    let events = json_lines(&run(&["events", "--store", &store, "--json"]));
    // The events both reactions handle.
    let sources: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["name"] == "Deposited" || e["name"] == "Withdrawn")
        .collect();
    assert!(!sources.is_empty(), "{events:?}");
    let mut spans: Vec<Span> = Vec::new();
    wait_until(
        "the receiver to have two handler spans per deposit or withdrawal",
        Duration::from_secs(30),
        || {
            spans = receiver.spans();
            spans.iter().filter(|s| s.name == "act.handle").count() == 2 * sources.len()
        },
    );
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for source in sources {
        let stored = source["meta"]["causation"]["trace"].as_str().unwrap();
        let (trace_id, span_id) = (&stored[3..35], &stored[36..52]);
        // The action that appended it, in the demo process: a root.
        let action = by_id
            .get(span_id)
            .unwrap_or_else(|| panic!("the span stored with {source} was received"));
        assert_eq!(
            (action.name.as_str(), action.trace_id.as_str()),
            ("act.action", trace_id)
        );
        assert_eq!(action.service, "act");
        assert!(action.parent_span_id.is_empty(), "{action:?}");
        // Its reactions, in the worker: children of that span, each with
        // the action it ran as its own child, all in the action's trace.
        let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let handles: Vec<&&Span> = trace
            .iter()
            .filter(|s| s.name == "act.handle" && s.parent_span_id == span_id)
            .collect();
        let reactions: HashSet<&str> = handles.iter().filter_map(|s| s.attr("reaction")).collect();
        assert_eq!(reactions, HashSet::from(["audit", "totals"]), "{trace:#?}");
        for h in handles {
            assert_eq!(h.service, "bank-worker");
            assert!(
                trace
                    .iter()
                    .any(|s| s.name == "act.action" && s.parent_span_id == h.span_id),
                "the action {h:?} ran is its child: {trace:#?}"
            );
        }
    }
}

#[test]
fn a_bad_endpoint_is_one_error_line_and_exit_1() {
    for bad in ["collector:4318", "https://collector:4318", "http://"] {
        let out = act()
            .args(["status", "--store", "memory:", "--otlp-endpoint", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.starts_with("error: bad OTLP endpoint"), "{bad}: {err}");
        assert!(out.stdout.is_empty(), "{bad}: nothing ran");
    }
    // From the environment too.
    let out = act()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "nope")
        .args(["status", "--store", "memory:"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: bad OTLP endpoint \"nope\""));
}

#[test]
fn a_collector_that_is_not_there_changes_nothing_but_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    let nowhere = format!("http://127.0.0.1:{}", act_testservers::free_port());
    demo(&store, &["--otlp-endpoint", &nowhere]);
    let out = act()
        .env("ACT_LOG", "warn")
        .args([
            "settle",
            "--store",
            &store,
            "--json",
            "--otlp-endpoint",
            &nowhere,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(drained(&store));
    // The failed export (or, on a slow machine, the shutdown that gave up
    // waiting for it) is logged as an error of the SDK.
    assert!(
        err.contains("ERROR") && err.contains("opentelemetry_sdk"),
        "{err}"
    );
    let settled = json_lines(&out);
    assert!(
        settled
            .iter()
            .any(|l| l["stats"]["reactions"].as_u64() > Some(0)),
        "{settled:?}"
    );
}
