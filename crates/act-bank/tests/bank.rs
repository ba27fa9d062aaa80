//! The bank demo end to end on the in-memory store, and the checker's own
//! ability to find what is wrong.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use act::{Append, BrokerOptions, MemoryStore, Message, Store};
use act_bank::{verify, Workload};
use serde_json::json;

async fn run(store: Arc<dyn Store>, w: &Workload) -> act_bank::Report {
    let app = act_bank::app(store).unwrap();
    let report = w.run(&app, Arc::new(AtomicU64::new(0))).await.unwrap();
    app.broker(BrokerOptions::default()).settle().await.unwrap();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_one_receipt_per_source_in_order_and_blocks_only_poisoned_queues() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let w = Workload {
        accounts: 20,
        events: 2_000,
        fail_share: 0.05,
        ..Workload::default()
    };
    let report = run(store.clone(), &w).await;
    assert_eq!(report.events(), 2_000);
    assert_eq!(report.opened, 20);
    assert_eq!(report.poisoned, 2);
    assert!(report.failing > 0);
    let v = verify(&*store).await.unwrap();
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 2_000);
    assert_eq!(v.totaled, 2_000);
    assert_eq!(v.blocked, v.poisoned);
    assert_eq!(v.blocked.len(), 2);
    assert!(v.recorded < 2_000, "receipts stop at each poisoned deposit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demos_on_one_store_open_accounts_once_and_still_verify() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let w = Workload {
        accounts: 10,
        events: 500,
        ..Workload::default()
    };
    let a = run(store.clone(), &w).await;
    let b = run(store.clone(), &Workload { seed: 7, ..w }).await;
    assert_eq!(
        a.opened + b.opened,
        10,
        "opening an open account is not an error"
    );
    let v = verify(&*store).await.unwrap();
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.sources, 1_000);
}

#[tokio::test]
async fn verify_finds_a_duplicated_receipt_and_a_missing_total() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let w = Workload {
        accounts: 3,
        events: 30,
        poison: 0,
        ..Workload::default()
    };
    run(store.clone(), &w).await;
    assert!(verify(&*store).await.unwrap().ok());
    let first = store
        .query(
            &act::Query::new()
                .stream("audit-0")
                .names(["Recorded"])
                .limit(1),
        )
        .await
        .unwrap();
    store
        .append(Append::new(
            "audit-0",
            vec![Message::new("Recorded", first[0].data.clone())],
        ))
        .await
        .unwrap();
    store
        .append(Append::new(
            "account-1",
            vec![Message::new("Deposited", json!({"amount": 5}))],
        ))
        .await
        .unwrap();
    let v = verify(&*store).await.unwrap();
    assert!(!v.ok());
    let text = v.problems.join("\n");
    assert!(
        text.contains("audit-0") && text.contains("1 duplicated"),
        "{text}"
    );
    assert!(text.contains("totals"), "{text}");
}

#[tokio::test]
async fn a_workload_with_impossible_numbers_is_refused() {
    let w = Workload {
        accounts: 2,
        poison: 3,
        ..Workload::default()
    };
    let err = w.validate().unwrap_err().to_string();
    assert!(
        err.contains("--poison 3 is more than --accounts 2"),
        "{err}"
    );
}

/// The documented fix flow, then a second run on the same store: unblock
/// the poisoned audit queues, deliver them with the fix deployed, and run
/// the demo again; the check must still pass (the second run's poisons block
/// their queues at the new poisons, the cured ones have every receipt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fix_flow_then_a_second_run_still_verifies() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let w = Workload {
        accounts: 20,
        events: 1_000,
        ..Workload::default()
    };
    run(store.clone(), &w).await;
    let v = verify(&*store).await.unwrap();
    assert!(v.ok(), "{:#?}", v.problems);
    store.unblock(&v.blocked).await.unwrap();
    let cured = act_bank::app_with(
        store.clone(),
        act_bank::Options {
            cured: true,
            ..Default::default()
        },
    )
    .unwrap();
    cured
        .broker(BrokerOptions::default())
        .settle()
        .await
        .unwrap();
    let after_fix = verify(&*store).await.unwrap();
    assert!(after_fix.ok(), "{:#?}", after_fix.problems);
    assert!(after_fix.blocked.is_empty());
    assert_eq!(after_fix.cured.len(), 2);
    run(store.clone(), &w).await;
    let again = verify(&*store).await.unwrap();
    assert!(again.ok(), "{:#?}", again.problems);
    assert_eq!(again.sources, 2_000);
    assert!(
        !again.blocked.is_empty(),
        "the second run's poisons block again"
    );
}

/// Version 2 of the demo adds the `ledger` reaction to a running bank: it
/// replays the whole history, then keeps up; the check covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_added_later_posts_the_whole_history_once_in_order() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let w = Workload {
        accounts: 10,
        events: 800,
        poison: 0,
        ..Workload::default()
    };
    run(store.clone(), &w).await;
    let v2 = act_bank::app_with(
        store.clone(),
        act_bank::Options {
            ledger: true,
            ..Default::default()
        },
    )
    .unwrap();
    let more = w.run(&v2, Arc::new(AtomicU64::new(0))).await.unwrap();
    v2.broker(BrokerOptions::default()).settle().await.unwrap();
    let v = verify(&*store).await.unwrap();
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(v.posted, 800 + more.events());
}
