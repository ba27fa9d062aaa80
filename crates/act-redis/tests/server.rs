//! Behaviour that needs a Redis server of its own: each test starts a
//! private `redis-server` on a free local port ([`PrivateRedis`], killed
//! when the test ends), so it can be killed, paused, restarted or
//! misconfigured without touching the shared one.

use std::time::{Duration, Instant};

use act::{
    Append, Claim, Correlation, Error, EventStore, Message, QueueStore, Settlement, Subscription,
    Work,
};
use act_redis::{ConfigError, RedisStore};
use act_testservers::redis::PrivateRedis;
use serde_json::json;

fn url(server: &PrivateRedis, query: &str) -> String {
    format!("{}?{query}", server.url())
}

fn ping() -> Append {
    Append::new("a", vec![Message::new("Ping", json!({}))])
}

fn config_error(e: &Error) -> Option<&ConfigError> {
    match e {
        Error::Store { source, .. } => source.downcast_ref::<ConfigError>(),
        _ => None,
    }
}

/// Retries `f` while the store is unavailable (it reconnects on its own),
/// up to a generous deadline.
async fn until_available<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = act::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{what}: the store did not come back: {e}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_naming_the_url_without_its_password() {
    let port = act_testservers::free_port();
    let url = format!("redis://:secret@127.0.0.1:{port}/0?prefix=x");
    let started = Instant::now();
    let e = RedisStore::open(&url).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(e.is_transient());
    let text = e.to_string();
    assert!(
        text.contains(&format!("redis://:***@127.0.0.1:{port}/0?prefix=x")),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_server_that_may_evict_keys_is_refused() {
    let server = PrivateRedis::start(&["--maxmemory-policy", "allkeys-lru"]);
    let e = RedisStore::open(&url(&server, "prefix=x&assume_noeviction=true"))
        .await
        .unwrap_err();
    assert_eq!(
        config_error(&e),
        Some(&ConfigError::Eviction {
            policy: "allkeys-lru".into()
        }),
        "{e:?}"
    );
    assert!(e.to_string().contains("noeviction"), "{e}");
}

#[tokio::test]
async fn a_server_that_hides_its_config_is_refused_unless_the_url_vouches_for_it() {
    let server = PrivateRedis::start(&["--rename-command", "CONFIG", ""]);
    let e = RedisStore::open(&url(&server, "prefix=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(config_error(&e), Some(ConfigError::PolicyUnreadable { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("assume_noeviction=true"), "{e}");
    let store = RedisStore::open(&url(&server, "prefix=x&assume_noeviction=true"))
        .await
        .expect("assume_noeviction=true opens it");
    store.append(ping()).await.unwrap();
}

#[tokio::test]
async fn a_paused_server_is_unavailable_after_the_timeout() {
    let mut server = PrivateRedis::start(&[]);
    let store = RedisStore::open(&url(&server, "prefix=x&timeout_ms=300"))
        .await
        .unwrap();
    store.append(ping()).await.unwrap();
    server.pause();
    let r = store.append(ping()).await;
    server.resume();
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    until_available("append after resume", || store.append(ping())).await;
}

#[tokio::test]
async fn a_read_only_replica_is_unavailable_not_a_failure() {
    let primary = PrivateRedis::start(&[]);
    let replica = PrivateRedis::start(&[]);
    let store = RedisStore::open(&url(&replica, "prefix=x&timeout_ms=2000"))
        .await
        .unwrap();
    store.append(ping()).await.unwrap();
    // The URL now reaches a replica (as the old primary after a failover).
    let mut c = redis::Client::open(replica.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query(&mut c)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        match store.append(ping()).await {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("the replica kept accepting writes"),
        }
    };
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    // Promoted again: writes go on.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut c)
        .unwrap();
    until_available("append after promotion", || store.append(ping())).await;
}

fn subscription(name: &str) -> Subscription {
    Subscription {
        name: name.into(),
        events: vec!["Ping".into()],
        target: None,
        start: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_its_wake_ups_come_back_after_a_server_kill_and_restart() {
    let mut server = PrivateRedis::start(&[]);
    let url = url(&server, "prefix=x&timeout_ms=1000");
    let a = RedisStore::open(&url).await.unwrap();
    let b = RedisStore::open(&url).await.unwrap();
    let mut woken = b.wake();
    woken.borrow_and_update();
    server.kill();
    assert!(a.head().await.unwrap_err().is_transient());
    server.start_again();
    // While the server was away messages may have been lost: the listener
    // says so with a wake-up once it has subscribed again.
    tokio::time::timeout(Duration::from_secs(20), woken.changed())
        .await
        .expect("no wake-up after the listener reconnected")
        .unwrap();
    // The connection manager reconnects too: calls work again (the first may
    // fail while it reconnects), scripts are loaded again on NOSCRIPT. The
    // server kept nothing (no persistence), so the store starts empty.
    let e = until_available("append", || a.append(ping())).await;
    assert_eq!(e[0].id, 1);
    a.subscribe(&[subscription("r")]).await.unwrap();
    let after = a
        .enqueue(&Correlation {
            reactions: vec!["r".into()],
            replay: None,
            from: 0,
            to: 1,
            work: vec![Work {
                stream: "q".into(),
                event: 1,
                reaction: "r".into(),
                priority: 0,
            }],
        })
        .await
        .unwrap();
    assert_eq!(after.positions, vec![Some(1)]);
    let got = a
        .claim(&Claim {
            owner: "o".into(),
            queues: 1,
            events: 10,
            lease: Duration::from_secs(30),
            reactions: vec!["r".into()],
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let r = a
        .settle(&[Settlement::ack(&got[0].lease, 1)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    // And cross-process wake-ups flow again.
    woken.borrow_and_update();
    a.append(ping()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken.changed())
        .await
        .expect("no wake-up after the restart")
        .unwrap();
}

/// The listener's reconnect pause grows during a long outage (up to 5 s)
/// and starts again from 50 ms once it has subscribed: a second, short
/// outage right after is noticed and repaired within a fraction of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wake_up_listener_backoff_starts_again_after_it_reconnected() {
    let mut server = PrivateRedis::start(&[]);
    let store = RedisStore::open(&url(&server, "prefix=x&timeout_ms=1000"))
        .await
        .unwrap();
    let mut woken = store.wake();
    woken.borrow_and_update();
    // A long outage: the pause reaches its cap (50 ms doubling: 6.35 s).
    server.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    server.start_again();
    tokio::time::timeout(Duration::from_secs(20), woken.changed())
        .await
        .expect("no wake-up after the first outage")
        .unwrap();
    woken.borrow_and_update();
    // A short one right after.
    server.restart();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), woken.changed())
        .await
        .expect("no wake-up after the second outage")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the listener took {took:?} to come back: its backoff did not start again"
    );
}

/// The `name=` fields of the server's `CLIENT LIST` (asked on a connection
/// of the test's own, which has no name).
fn client_names(server: &PrivateRedis) -> Vec<String> {
    let mut c = redis::Client::open(server.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("CLIENT LIST on port {}: {e}", server.port()));
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut c)
        .unwrap_or_else(|e| panic!("CLIENT LIST on port {}: {e}", server.port()));
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name=")))
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Opens a store named `billing-7` with `protocol`, restarts the server,
/// and waits (calling the store, which reconnects on its own) until
/// `CLIENT LIST` shows the name again.
async fn named_again_after_a_restart(protocol: &str) {
    let mut server = PrivateRedis::start(&[]);
    let store = RedisStore::open(&url(
        &server,
        &format!("prefix=x&timeout_ms=1000&client_name=billing-7&protocol={protocol}"),
    ))
    .await
    .unwrap();
    assert_eq!(client_names(&server), vec!["billing-7".to_string()]);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Fails while the connection is being replaced; that is expected.
        let head = store.head().await;
        let names = client_names(&server);
        if head.is_ok() && names == ["billing-7"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{protocol}: no connection named billing-7 30 s after the restart \
             (last call: {head:?}; names: {names:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_named_again_after_a_server_restart() {
    named_again_after_a_restart("resp2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_named_again_after_a_server_restart_on_resp3() {
    named_again_after_a_restart("resp3").await;
}

/// A settle and a claim sent in one pipeline after the server lost its
/// scripts (`SCRIPT FLUSH`; a restart does the same): each is loaded again,
/// the settle is applied once, and the claim after it sees it. On a private
/// server, so no other test loads a script in between.
#[tokio::test]
async fn settle_and_claim_loads_its_scripts_again_after_script_flush() {
    let server = PrivateRedis::start(&[]);
    let store = RedisStore::open(&url(&server, "prefix=x")).await.unwrap();
    let events = store
        .append(Append::new(
            "a",
            vec![
                Message::new("Ping", json!({})),
                Message::new("Ping", json!({})),
            ],
        ))
        .await
        .unwrap();
    let (first, second) = (events[0].id, events[1].id);
    store.subscribe(&[subscription("r")]).await.unwrap();
    let work = |event| Work {
        stream: "q".into(),
        event,
        reaction: "r".into(),
        priority: 0,
    };
    store
        .enqueue(&Correlation {
            reactions: vec!["r".into()],
            replay: None,
            from: 0,
            to: second,
            work: vec![work(first), work(second)],
        })
        .await
        .unwrap();
    let one = Claim {
        owner: "o".into(),
        queues: 1,
        events: 1,
        lease: Duration::from_secs(30),
        reactions: vec!["r".into()],
    };
    let got = store.claim(&one).await.unwrap();
    assert_eq!(got[0].events[0].event.id, first);
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw).unwrap();
    let out = store
        .settle_and_claim(&[Settlement::ack(&got[0].lease, first)], &one)
        .await;
    assert_eq!(out.settled.unwrap(), vec![Ok(())]);
    let next = out.claimed.unwrap();
    assert_eq!(next.len(), 1, "the claim did not see the ack: {next:?}");
    assert_eq!(next[0].lease.position, first);
    assert_eq!(next[0].events[0].event.id, second);
    // Applied once: the old lease is fenced off.
    let again = store
        .settle(&[Settlement::ack(&got[0].lease, first)])
        .await
        .unwrap();
    assert!(again[0].is_err(), "{again:?}");
}
