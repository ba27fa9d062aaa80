//! The operator CLI as a new user tries it in the first hour: flags are
//! checked before anything is written, read-only commands never create a
//! store, help and errors agree with the README, the documented fix flow
//! checks clean, and text output is for people. Exit codes and messages are
//! asserted; SQLite files live in a temporary directory.

mod common;

use std::path::Path;
use std::process::Output;

use common::{act, json_lines, pg_store, run};

fn sqlite(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

fn fails(args: &[&str]) -> Output {
    let out = act().args(args).output().unwrap();
    assert!(!out.status.success(), "act {args:?} should fail");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn every_flag_is_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path(), "demo.db");
    let out = fails(&["demo", "--store", &store, "--lease", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--lease must be a positive number of seconds"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("demo.db").exists(),
        "nothing was written before the flag was checked"
    );
    for (flag, value) in [
        ("--writers", "0"),
        ("--batch", "0"),
        ("--concurrency", "0"),
        ("--accounts", "0"),
        ("--poll-ms", "0"),
    ] {
        let out = fails(&["demo", "--store", &store, flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: a usage error");
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains("must be at least 1"),
            "{flag}: {err}"
        );
        assert!(!dir.path().join("demo.db").exists());
    }
    let out = fails(&["demo", "--store", &store, "--fail-share", "1.5"]);
    assert!(
        stderr(&out).contains("--fail-share must be between 0 and 1"),
        "{}",
        stderr(&out)
    );
    let out = fails(&["worker", "--store", &store, "--concurrency", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.path().join("demo.db").exists());
}

#[test]
fn read_only_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let typo = sqlite(dir.path(), "typo.db");
    for args in [
        vec!["status"],
        vec!["blocked"],
        vec!["events"],
        vec!["reactions"],
        vec!["reset", "totals", "--to", "0"],
        vec!["unblock", "audit-1"],
        vec!["retire", "audit"],
    ] {
        let mut full = args.clone();
        full.extend(["--store", &typo]);
        let out = fails(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no act store at") && err.contains("typo.db"),
            "{args:?}: {err}"
        );
        assert!(
            !dir.path().join("typo.db").exists(),
            "{args:?} created the file"
        );
    }
}

#[test]
fn a_typo_in_a_postgres_schema_is_an_error_not_a_new_schema() {
    let (store, _drop) = pg_store("typo");
    let out = fails(&["status", "--store", &store]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no act store"), "{}", stderr(&out));
    let schema = store.split("schema=").nth(1).unwrap().to_string();
    let exists = std::process::Command::new("psql")
        .args([
            &common::pg_server(),
            "-Atqc",
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exists.stdout).trim(),
        "0",
        "status created schema {schema}"
    );
}

#[test]
fn help_lists_every_scheme_and_url_option() {
    let out = run(&["--help"]);
    let help = stdout(&out);
    let options = act_sqlite::KNOWN_OPTIONS
        .iter()
        .chain(act_pg::KNOWN_OPTIONS)
        .chain(act_redis::KNOWN_OPTIONS)
        .map(|o| format!("{o}="));
    for needle in [
        "sqlite://",
        "postgres://",
        "redis://",
        "rediss://",
        "memory:",
    ]
    .into_iter()
    .map(String::from)
    .chain(options)
    {
        assert!(
            help.contains(needle.as_str()),
            "`act --help` does not mention {needle}:\n{help}"
        );
    }
    #[cfg(feature = "opentelemetry")]
    for needle in [
        "--otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "--service-name",
        "ACT_TRACE",
    ] {
        assert!(
            help.contains(needle),
            "`act --help` does not mention {needle}:\n{help}"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    for command in [
        "act status",
        "act blocked",
        "act unblock",
        "act reset",
        "act reactions",
        "act retire",
        "act worker",
        "act events",
    ] {
        assert!(
            readme.contains(command),
            "the README does not show `{command}`"
        );
        let sub = command.trim_start_matches("act ");
        assert!(help.contains(sub), "`act --help` does not list `{sub}`");
    }
}

#[test]
fn the_documented_fix_flow_then_another_demo_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path(), "flow.db");
    let first = json_lines(&run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "1000",
        "--accounts",
        "20",
        "--json",
    ]))
    .remove(0);
    assert_eq!(first["check"]["ok"], true, "{first}");
    let blocked: Vec<String> = first["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    assert!(!blocked.is_empty());
    let mut unblock = vec!["unblock", "--store", &store];
    unblock.extend(blocked.iter().map(String::as_str));
    run(&unblock);
    run(&["settle", "--store", &store, "--cured"]);
    let second = json_lines(&run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "1000",
        "--accounts",
        "20",
        "--json",
    ]))
    .remove(0);
    assert_eq!(
        second["check"]["ok"], true,
        "the second run checks clean: {second}"
    );
}

#[test]
fn negative_positions_parse_alike_and_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path(), "neg.db");
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "50",
        "--accounts",
        "2",
        "--poison",
        "0",
    ]);
    let spaced = fails(&["reset", "totals", "--to", "-1", "--store", &store]);
    let joined = fails(&["reset", "totals", "--to=-1", "--store", &store]);
    assert_eq!(spaced.status.code(), Some(1));
    assert_eq!(
        stderr(&spaced),
        stderr(&joined),
        "`--to -1` and `--to=-1` mean the same"
    );
    assert!(
        stderr(&spaced).contains("negative position (-1)"),
        "{}",
        stderr(&spaced)
    );
    let past = fails(&["reset", "totals", "--to", "999999999", "--store", &store]);
    assert_eq!(past.status.code(), Some(1));
    assert!(
        stderr(&past).contains("999999999") && stderr(&past).contains("head"),
        "{}",
        stderr(&past)
    );
}

#[test]
fn unblocking_an_unknown_queue_says_so_once_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path(), "unblock.db");
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "50",
        "--accounts",
        "2",
        "--poison",
        "0",
    ]);
    let out = fails(&["unblock", "nope", "--store", &store]);
    assert_eq!(out.status.code(), Some(1));
    let (err, text) = (stderr(&out), stdout(&out));
    assert_eq!(err.matches("nope").count(), 1, "once on stderr: {err}");
    assert!(!text.contains("nope"), "not on stdout too: {text}");
    let twice = run(&["unblock", "totals", "totals", "--store", &store]);
    assert_eq!(
        stdout(&twice).matches("totals").count(),
        1,
        "a queue named twice is reported once"
    );
}

#[test]
fn status_is_for_people_natural_order_and_singular_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path(), "people.db");
    run(&[
        "demo",
        "--store",
        &store,
        "--events",
        "300",
        "--accounts",
        "12",
        "--poison",
        "0",
    ]);
    let text = stdout(&run(&["status", "--store", &store]));
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("audit-"))
        .collect();
    let two = names.iter().position(|n| *n == "audit-2").unwrap();
    let ten = names.iter().position(|n| *n == "audit-10").unwrap();
    assert!(two < ten, "audit-2 comes before audit-10: {names:?}");
    let one = stdout(&run(&["status", "--store", &store, "--stream", "totals"]));
    assert!(one.contains("1 queue,"), "{one}");
    let wide = stdout(&run(&["status", "--store", &store, "--wide"]));
    assert!(wide.contains("WAITING FOR"), "{wide}");
}
