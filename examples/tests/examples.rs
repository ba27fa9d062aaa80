//! Runs every example binary and checks what it reports: exit code 0 and its
//! final `ok: …` line with the figures it checked itself.

use std::process::Command;

/// Runs `exe`, asserts success, and returns its last line of output.
fn run(exe: &str) -> String {
    let out = Command::new(exe).output().expect("the example starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{exe} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("ok: "),
        "{exe}: the last line is not `ok: …`:\n{stdout}"
    );
    last
}

#[test]
fn counter_accepts_refuses_and_survives_a_conflict() {
    let ok = run(env!("CARGO_BIN_EXE_counter"));
    assert!(ok.contains("value 10 at version 2"), "{ok}");
}

#[test]
fn read_model_is_the_same_after_a_rebuild() {
    let ok = run(env!("CARGO_BIN_EXE_read-model"));
    assert!(
        ok.contains("3 products, rebuilt from 4 events identical"),
        "{ok}"
    );
}

#[test]
fn http_retry_delivers_after_a_timeout_and_two_503s_and_blocks_on_a_404() {
    let ok = run(env!("CARGO_BIN_EXE_http-retry"));
    assert!(ok.contains("order-1 delivered on call 4"), "{ok}");
    assert!(ok.contains("order-2 blocked after 1 call"), "{ok}");
}

#[test]
fn order_saga_confirms_one_order_and_compensates_the_other() {
    let ok = run(env!("CARGO_BIN_EXE_order-saga"));
    assert!(ok.contains("order-1 confirmed"), "{ok}");
    assert!(
        ok.contains("order-2 cancelled (not enough stock: 2 left, 4 asked)"),
        "{ok}"
    );
}

#[test]
fn reminder_fires_once_for_the_unpaid_order_and_never_for_the_paid_one() {
    let ok = run(env!("CARGO_BIN_EXE_reminder"));
    assert!(ok.contains("order-1 reminded once"), "{ok}");
    assert!(
        ok.contains("order-2 was paid and its reminder cancelled"),
        "{ok}"
    );
}

#[test]
fn projection_is_applied_once_in_the_store_s_transaction_and_rebuilt_identical() {
    let ok = run(env!("CARGO_BIN_EXE_projection"));
    assert!(ok.contains("2 balances from 5 events"), "{ok}");
    assert!(ok.contains("rebuilt identical"), "{ok}");
}
