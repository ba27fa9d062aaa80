//! `act demo` as a user runs it: the real binary, its exit codes and output.

use std::process::Command;

fn act() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_act"));
    c.env_remove("ACT_STORE");
    c
}

#[test]
fn demo_on_memory_delivers_and_its_summary_matches_the_log() {
    let out = act()
        .args([
            "demo",
            "--store",
            "memory:",
            "--accounts",
            "100",
            "--events",
            "10000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events"], 10_000);
    assert_eq!(summary["opened"], 100);
    let check = &summary["check"];
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["sources"], 10_000);
    assert_eq!(check["totaled"], 10_000);
    assert_eq!(
        summary["blocked"].as_array().unwrap().len(),
        2,
        "two poisoned accounts"
    );
    let recorded = check["recorded"].as_u64().unwrap();
    assert!(recorded < 10_000, "audit stops at each poison");
    assert_eq!(summary["reactions"].as_u64().unwrap(), 10_000 + recorded);
}

#[test]
fn an_unknown_store_url_is_an_operational_error_listing_the_schemes() {
    let out = act()
        .args(["demo", "--store", "mysql://root:pw@db/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown store URL `mysql://root:***@db/x`"),
        "{err}"
    );
    assert!(
        err.contains(
            "supported schemes are sqlite://PATH, postgres://USER@HOST/DB[?schema=NAME], redis://HOST[:PORT][/DB][?prefix=NAME] (rediss:// for TLS), memory:"
        ),
        "{err}"
    );
}

#[test]
fn a_usage_error_exits_with_2() {
    let out = act().args(["demo", "--accounts", "many"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = act()
        .args([
            "demo",
            "--accounts",
            "1",
            "--poison",
            "2",
            "--store",
            "memory:",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--poison 2 is more than --accounts 1"));
}
