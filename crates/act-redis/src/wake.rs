//! Wake-ups across processes: every script that commits claimable work
//! publishes on the store's channel (`{prefix}:wake`); a listener task owned
//! by the store subscribes and bumps the `watch` channel brokers wait on.
//!
//! The listener pings the server when the channel is quiet, and after the
//! connection is lost (a server restart, a killed client) it reconnects with
//! backoff and bumps the channel once, since messages published meanwhile
//! are gone. Brokers poll as well, so a missed message delays work but never
//! loses it. Dropping the store aborts the task.

use std::sync::Arc;
use std::time::Duration;

use act::Wake;
use futures_util::StreamExt;
use redis::aio::PubSub;
use redis::{Client, RedisResult};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the channel may stay quiet before the listener pings.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Reconnection backoff bounds.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// The listener's pause between reconnection attempts: doubles after each
/// failed attempt up to [`LONGEST_PAUSE`], and starts again at
/// [`FIRST_PAUSE`] once a subscription succeeded, so the next outage is
/// noticed as quickly as the first.
#[derive(Debug)]
struct Reconnect {
    pause: Duration,
}

impl Reconnect {
    fn new() -> Self {
        Reconnect { pause: FIRST_PAUSE }
    }

    /// How long to wait before the next attempt.
    fn pause(&self) -> Duration {
        self.pause
    }

    /// An attempt failed: wait longer next time.
    fn failed(&mut self) {
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }

    /// An attempt succeeded: the next outage starts from the first pause.
    fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
    }
}

/// The listener task; aborted on drop.
pub(crate) struct Listener {
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a published message says changed: the append script publishes the
/// id of its last event, every other script its own name (`settle`,
/// `enqueue`…), which is work only. A payload this version cannot read
/// counts as new events.
fn woken(payload: &[u8]) -> fn(&mut Wake) {
    const WORK: [&str; 4] = ["settle", "release", "unblock", "enqueue"];
    match std::str::from_utf8(payload).ok() {
        Some(p) if WORK.contains(&p) => Wake::new_work,
        _ => Wake::new_events,
    }
}

/// Subscribes now (so wake-ups flow as soon as the store is open) and
/// starts the task that keeps the subscription alive.
pub(crate) async fn listen(
    client: Client,
    channel: String,
    wake: Arc<watch::Sender<Wake>>,
    store: Arc<str>,
    timeout: Duration,
) -> act::Result<Listener> {
    let first = subscribe(&client, &channel, timeout)
        .await
        .map_err(|e| crate::error::map(&store, e))?;
    let task = tokio::spawn(run(client, channel, wake, store, first, timeout));
    Ok(Listener { task })
}

async fn subscribe(client: &Client, channel: &str, timeout: Duration) -> RedisResult<PubSub> {
    let timed_out = || {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing to wake-ups timed out",
        ))
    };
    let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    tokio::time::timeout(timeout, pubsub.subscribe(channel))
        .await
        .map_err(|_| timed_out())??;
    Ok(pubsub)
}

/// Forwards messages until the connection is lost, then reconnects; runs
/// until aborted.
async fn run(
    client: Client,
    channel: String,
    wake: Arc<watch::Sender<Wake>>,
    store: Arc<str>,
    first: PubSub,
    timeout: Duration,
) {
    let mut current = Some(first);
    let mut backoff = Reconnect::new();
    loop {
        if let Some(pubsub) = current.take() {
            let (mut sink, mut messages) = pubsub.split();
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        Some(msg) => wake.send_modify(woken(msg.get_payload_bytes())),
                        None => break,
                    },
                    _ = tokio::time::sleep(KEEPALIVE) => {
                        let ping = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::warn!(store = %store, "wake-up subscription lost; reconnecting (brokers poll meanwhile)");
        }
        tokio::time::sleep(backoff.pause()).await;
        match subscribe(&client, &channel, timeout).await {
            Ok(pubsub) => {
                tracing::info!(store = %store, "wake-up subscription restored");
                backoff.succeeded();
                current = Some(pubsub);
                // Whatever was published while we were away is lost.
                wake.send_modify(Wake::new_events);
            }
            Err(e) => {
                tracing::debug!(store = %store, error = %e, "cannot subscribe to wake-ups yet");
                backoff.failed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_pause_doubles_up_to_a_cap_and_resets_after_a_success() {
        let mut b = Reconnect::new();
        assert_eq!(b.pause(), FIRST_PAUSE);
        b.failed();
        assert_eq!(b.pause(), FIRST_PAUSE * 2);
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.pause(), LONGEST_PAUSE);
        b.succeeded();
        assert_eq!(b.pause(), FIRST_PAUSE);
    }

    fn after(payload: &[u8]) -> Wake {
        let mut w = Wake::default();
        woken(payload)(&mut w);
        w
    }

    #[test]
    fn only_an_append_or_an_unknown_message_says_the_log_changed() {
        let seen = Wake::default();
        for work in ["settle", "release", "unblock", "enqueue"] {
            let w = after(work.as_bytes());
            assert!(!w.has_events_since(&seen), "{work} is work only");
            assert_ne!(w.work, seen.work, "{work} still wakes claims");
        }
        for events in [&b"12345"[..], b"reset", b"retire", b"", b"\xff"] {
            assert!(after(events).has_events_since(&seen), "{events:?}");
        }
    }
}
