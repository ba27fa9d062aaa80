//! Cross-process wake-up with `LISTEN/NOTIFY`.
//!
//! A `NOTIFY` inside a writing transaction makes PostgreSQL serialize the
//! commits of all notifying transactions (it takes a global lock at commit):
//! on this machine it cut 8-client insert throughput from 15,800 to 5,000 per
//! second. So writes never notify themselves. After a commit the store pokes
//! a *notifier* task, which sends `pg_notify` in its own tiny transaction,
//! coalescing pokes that arrive while one is in flight. A *listener* task
//! holds a dedicated connection with `LISTEN` and turns notifications into
//! wake-ups; when the connection drops it reconnects with capped exponential
//! backoff (brokers poll meanwhile), starting again from the shortest pause
//! once a connection has worked, and wakes once after reconnecting, for
//! anything missed.
//! Both tasks belong to the store and are aborted when it is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_postgres::AsyncMessage;

use act::Wake;

use crate::Connector;

/// What a NOTIFY's payload says changed: `w` is work only (a settle, a
/// release, an enqueue); anything else (`e`, or the empty payload of older
/// versions) may be new events.
fn woken(payload: &str) -> fn(&mut Wake) {
    if payload == WORK {
        Wake::new_work
    } else {
        Wake::new_events
    }
}

/// The payloads this version sends.
const EVENTS: &str = "e";
const WORK: &str = "w";

/// The shortest and longest pause between LISTEN connection attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LAST_PAUSE: Duration = Duration::from_secs(5);

/// The pause before the next LISTEN attempt: the shortest after a connection
/// that worked (however it ended), twice the last one (capped) after a
/// failed attempt.
fn next_pause(last: Duration, listened: bool) -> Duration {
    if listened {
        FIRST_PAUSE
    } else {
        (last * 2).clamp(FIRST_PAUSE, LAST_PAUSE)
    }
}

/// Listens on `channel` until aborted, waking `wake` on every notification;
/// connects with the store's TLS connector.
pub(crate) fn listener(
    config: tokio_postgres::Config,
    tls: Connector,
    channel: String,
    wake: Arc<watch::Sender<Wake>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Before the first attempt: a failure then waits FIRST_PAUSE.
        let mut pause = FIRST_PAUSE / 2;
        loop {
            let mut listened = false;
            if let Err(e) = listen_once(&config, &tls, &channel, &wake, &mut listened).await {
                tracing::warn!(error = %e, "LISTEN connection lost; brokers poll until it is back");
            }
            pause = next_pause(pause, listened);
            tokio::time::sleep(pause).await;
        }
    })
}

/// One LISTEN connection, until it ends. Sets `listened` once LISTEN is in
/// place.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &Connector,
    channel: &str,
    wake: &Arc<watch::Sender<Wake>>,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    // The connection must be driven while LISTEN runs; the JoinSet owns the
    // driver, so aborting this task aborts it too.
    let mut driver = JoinSet::new();
    let w = wake.clone();
    driver.spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => w.send_modify(woken(n.payload())),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    *listened = true;
    // Anything committed while we were not listening.
    wake.send_modify(Wake::new_events);
    let ended = driver.join_next().await;
    drop(client);
    match ended {
        Some(Ok(r)) => r,
        _ => Ok(()),
    }
}

/// How often, at most, the notifier sends while commits keep coming. Each
/// NOTIFY is a transaction of its own: one per append cost a single writer a
/// fifth of its throughput. When commits are sparse it sends at once.
pub(crate) const PACE: Duration = Duration::from_millis(2);

/// The pace of NOTIFYs for freed leases (see `PgStore::notify_soon`).
pub(crate) const SOFT_PACE: Duration = Duration::from_millis(50);

/// Sends `pg_notify(channel, payload)` after each poke, coalescing pokes
/// that arrive while one is in flight or within `pace` of the last, until
/// aborted. The payload says "events" when `events` was set since the last
/// one (it is cleared then), "work" otherwise.
pub(crate) fn notifier(
    pool: deadpool_postgres::Pool,
    channel: String,
    poke: Arc<Notify>,
    events: Option<Arc<AtomicBool>>,
    pace: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            poke.notified().await;
            if let Some(t) = last {
                tokio::time::sleep_until(t + pace).await;
            }
            last = Some(tokio::time::Instant::now());
            let payload = match &events {
                Some(e) if e.swap(false, Ordering::SeqCst) => EVENTS,
                _ => WORK,
            };
            let sent = async {
                let client = crate::conn::Conn::new(pool.get().await.map_err(|e| e.to_string())?);
                client
                    .query("SELECT pg_notify($1, $2)", &[&channel, &payload])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = sent.await {
                if let (Some(flag), EVENTS) = (&events, payload) {
                    // The next NOTIFY still has to say so.
                    flag.store(true, Ordering::SeqCst);
                }
                tracing::debug!(error = %e, "NOTIFY failed; other processes will poll");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

/// Wakes brokers a few milliseconds after each poke: a read found committed
/// events still hidden behind running transactions and will find them on the
/// next try. Pokes that arrive meanwhile are coalesced.
pub(crate) fn rechecker(poke: Arc<Notify>, wake: Arc<watch::Sender<Wake>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            poke.notified().await;
            tokio::time::sleep(Duration::from_millis(3)).await;
            wake.send_modify(Wake::new_events);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_backoff_grows_while_attempts_fail_and_restarts_after_one_works() {
        let mut pause = FIRST_PAUSE / 2;
        let mut seen = Vec::new();
        for _ in 0..8 {
            pause = next_pause(pause, false);
            seen.push(pause.as_millis());
        }
        assert_eq!(seen, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(
            next_pause(pause, true),
            FIRST_PAUSE,
            "a connection that worked resets it"
        );
        assert_eq!(next_pause(FIRST_PAUSE, false), FIRST_PAUSE * 2);
    }

    #[test]
    fn only_the_work_payload_says_the_log_did_not_change() {
        let seen = Wake::default();
        let mut w = Wake::default();
        woken(WORK)(&mut w);
        assert!(!w.has_events_since(&seen));
        assert_ne!(w.work, seen.work);
        // Older versions send an empty payload: it may be new events.
        for p in [EVENTS, "", "anything"] {
            let mut w = Wake::default();
            woken(p)(&mut w);
            assert!(w.has_events_since(&seen), "{p:?}");
        }
    }
}
