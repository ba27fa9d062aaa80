//! One-shot runs (`settle`, `run_once`) of several brokers at once: a broker
//! that lost the live cursor to another and has nothing left to deliver
//! ends once the store's checkpoint has reached the head of the log, not
//! when its follow of the winner runs out.
//!
//! The store's log reads take a turn of the runtime (as over a network), so
//! the two brokers' correlation steps interleave and one loses a race.
//! The clock is tokio's, paused: it moves only when every task waits, so
//! the elapsed time below is the sum of the brokers' sleeps, whatever the
//! machine is doing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use act::{Act, BrokerOptions, Reaction, Stats, Store};
use common::Watched;

/// Events in the backlog, in streams of `PER_STREAM`.
const EVENTS: usize = 2_000;
const PER_STREAM: usize = 100;
/// How long a loser of a correlation race leaves the cursor to the winner
/// (the broker's own constant is private; this is its documented value).
const FOLLOW: Duration = Duration::from_millis(100);

async fn backlog(store: &dyn Store) {
    common::backlog(store, EVENTS / PER_STREAM, PER_STREAM).await;
}

fn app(store: Arc<dyn Store>, delivered: &Arc<AtomicU64>) -> Act {
    let delivered = delivered.clone();
    Act::builder(store)
        .reaction(
            Reaction::on("Ping")
                .named("per-stream")
                .handle(move |_, _| {
                    let delivered = delivered.clone();
                    async move {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap()
}

fn options(owner: &str) -> BrokerOptions {
    // Small pages: the live cursor takes 20 steps, so both brokers race for it.
    BrokerOptions {
        correlate_batch: 100,
        ..BrokerOptions::default().owner(owner)
    }
}

/// Two brokers' one-shot runs (`settle` or `run_once`) side by side
/// deliver and correlate every event once, and both end before a loser's
/// follow of the winner would have run out.
async fn both_end_with_the_work(settle: bool) {
    let (a, b, elapsed, delivered) = two_at_once(settle).await;
    assert_eq!(delivered, EVENTS as u64, "every event delivered once");
    assert_eq!(a.events + b.events, EVENTS as u64);
    assert_eq!(
        a.correlated + b.correlated,
        EVENTS as u64,
        "every event correlated once, by the step that won it"
    );
    assert!(
        elapsed < FOLLOW,
        "both runs should end as soon as the log is correlated and \
         delivered; they took {elapsed:?} of the paused clock (a loser waited \
         out its follow of the winner)"
    );
}

/// Runs two brokers' one-shot runs side by side; their stats and the
/// (virtual) time until both returned.
async fn two_at_once(settle: bool) -> (Stats, Stats, Duration, u64) {
    let watched = Arc::new(Watched::default());
    watched.yields.store(true, Ordering::SeqCst);
    let store: Arc<dyn Store> = watched;
    backlog(&*store).await;
    let delivered = Arc::new(AtomicU64::new(0));
    let app = app(store, &delivered);
    let (a, b) = (app.broker(options("A")), app.broker(options("B")));
    let started = tokio::time::Instant::now();
    let (sa, sb) = if settle {
        tokio::join!(a.settle(), b.settle())
    } else {
        tokio::join!(a.run_once(), b.run_once())
    };
    let elapsed = started.elapsed();
    (
        sa.unwrap(),
        sb.unwrap(),
        elapsed,
        delivered.load(Ordering::Relaxed),
    )
}

#[tokio::test(start_paused = true)]
async fn a_settle_that_lost_the_live_cursor_ends_once_the_winner_has_correlated_the_log() {
    both_end_with_the_work(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_run_once_that_lost_the_live_cursor_ends_once_the_winner_has_correlated_the_log() {
    both_end_with_the_work(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_settle_beside_a_running_broker_ends_only_once_everything_is_delivered() {
    // Log reads take 30 ms: the running broker's 20 live steps take longer
    // than the follow, so the settle's follow of it ends midway.
    let watched = Arc::new(Watched::default());
    watched.read_ms.store(30, Ordering::SeqCst);
    let store: Arc<dyn Store> = watched;
    backlog(&*store).await;
    let delivered = Arc::new(AtomicU64::new(0));
    let app = app(store, &delivered);
    let running = app.broker(options("A")).start();
    tokio::task::yield_now().await;
    let settled = app.broker(options("B")).settle().await.unwrap();
    let at_return = delivered.load(Ordering::Relaxed);
    let other = running.shutdown().await.unwrap();
    assert_eq!(
        at_return, EVENTS as u64,
        "settle returned with work left: {at_return} of {EVENTS} delivered \
         (B correlated {}, A {})",
        settled.correlated, other.correlated
    );
}
