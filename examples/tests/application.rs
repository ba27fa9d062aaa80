//! The testing snippet of docs/application.md ("Testing reactions"), run as
//! a test; `the_guide_shows_this_file` keeps the two the same.

use std::sync::Arc;
use std::time::Duration;

use act::clock::ManualClock;
use act::{Act, Append, Backoff, BrokerOptions, HandlerError, MemoryStore, Message, Reaction};

#[tokio::test]
async fn a_failed_handler_is_retried_after_its_backoff() -> act::Result<()> {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with_clock(Arc::new(clock.clone())));
    let backoff = Backoff {
        base: Duration::from_secs(10),
        factor: 2.0,
        cap: Duration::from_secs(60),
        jitter: 0.0,
    };
    let flaky = Reaction::on("Pinged")
        .to_stream("pings")
        .from_beginning()
        .backoff(backoff)
        .handle(|_event, ctx| async move {
            if ctx.attempt() == 1 {
                return Err(HandlerError::transient("the first attempt fails"));
            }
            Ok(())
        });
    let app = Act::builder(store).reaction(flaky).build()?;
    let ping = Message::new("Pinged", serde_json::Value::Null);
    app.store()
        .append(Append::new("pinger", vec![ping]))
        .await?;

    let first = app.broker(BrokerOptions::default()).run_once().await?;
    assert_eq!((first.retries, first.reactions), (1, 0)); // retry due in 10 s
    clock.advance(Duration::from_secs(10));
    let second = app.broker(BrokerOptions::default()).run_once().await?;
    assert_eq!((second.retries, second.reactions), (0, 1));
    Ok(())
}

/// The guide's `rust,ignore` block is this file from its first `use` on.
#[test]
fn the_guide_shows_this_file() {
    let guide = include_str!("../../docs/application.md");
    let this = include_str!("application.rs");
    let start = this.find("use std::sync::Arc;").expect("the first use");
    let end = this.find("/// The guide's").expect("this test");
    let snippet = this[start..end].trim_end();
    assert!(
        guide.contains(snippet),
        "docs/application.md no longer shows tests/application.rs"
    );
}
