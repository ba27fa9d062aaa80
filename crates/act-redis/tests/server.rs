//! Behaviour that needs a Redis server of its own: each test starts a
//! private `redis-server` on a free local port (killed when the test ends),
//! so it can be stopped, restarted or misconfigured without touching the
//! shared one.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use act::{Append, Error, EventStore, Message};
use act_redis::{ConfigError, RedisStore};
use serde_json::json;

/// A private redis-server, killed on drop.
struct Server {
    port: u16,
    child: Child,
    args: Vec<String>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn(port, &args);
        Server { port, child, args }
    }

    fn url(&self, query: &str) -> String {
        format!("redis://127.0.0.1:{}/0?{query}", self.port)
    }

    /// Kills the server and starts it again on the same port (empty: no
    /// persistence).
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, &self.args);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, args: &[String]) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
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

#[tokio::test]
async fn an_unreachable_server_is_unavailable_naming_the_url_without_its_password() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
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
    let server = Server::start(&["--maxmemory-policy", "allkeys-lru"]);
    let e = RedisStore::open(&server.url("prefix=x&assume_noeviction=true"))
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
    let server = Server::start(&["--rename-command", "CONFIG", ""]);
    let e = RedisStore::open(&server.url("prefix=x")).await.unwrap_err();
    assert!(
        matches!(config_error(&e), Some(ConfigError::PolicyUnreadable { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("assume_noeviction=true"), "{e}");
    let store = RedisStore::open(&server.url("prefix=x&assume_noeviction=true"))
        .await
        .expect("assume_noeviction=true opens it");
    store.append(ping()).await.unwrap();
}

#[tokio::test]
async fn a_paused_server_is_unavailable_after_the_timeout() {
    let server = Server::start(&[]);
    let store = RedisStore::open(&server.url("prefix=x&timeout_ms=300"))
        .await
        .unwrap();
    store.append(ping()).await.unwrap();
    server.signal("-STOP");
    let r = store.append(ping()).await;
    server.signal("-CONT");
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
}

#[tokio::test]
async fn the_store_and_its_wake_ups_come_back_after_a_server_restart() {
    let mut server = Server::start(&[]);
    let url = server.url("prefix=x&timeout_ms=1000");
    let a = RedisStore::open(&url).await.unwrap();
    let b = RedisStore::open(&url).await.unwrap();
    let mut woken = b.wake();
    woken.borrow_and_update();
    server.restart();
    // While the server was away messages may have been lost: the listener
    // says so with a wake-up once it has subscribed again.
    tokio::time::timeout(Duration::from_secs(20), woken.changed())
        .await
        .expect("no wake-up after the listener reconnected")
        .unwrap();
    // The connection manager reconnects too: calls work again (the first may
    // fail while it reconnects).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match a.append(ping()).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the store did not come back: {e}"),
        }
    }
    // And cross-process wake-ups flow again.
    woken.borrow_and_update();
    a.append(ping()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken.changed())
        .await
        .expect("no wake-up after the restart")
        .unwrap();
}
