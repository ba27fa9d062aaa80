//! Connection faults between the store and Redis, made by a TCP proxy the
//! test owns in front of a private server: a reply cut off mid-way (the
//! connection drops while Redis answers) is `Unavailable`, never a
//! permanent failure, and the store reconnects on its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use act::{Append, Error, EventStore, Message, Query};
use act_redis::RedisStore;
use act_testservers::redis::PrivateRedis;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection to `upstream`; when `cut` is set, the next
/// chunk a server sends back is forwarded only in part and both sides of
/// that connection are closed.
async fn proxy(upstream: u16, cut: Arc<AtomicBool>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut pairs = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let cut = cut.clone();
            pairs.spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if n > 1 && cut.swap(false, Ordering::SeqCst) {
                            let _ = cw.write_all(&buf[..n / 2]).await;
                            let _ = cw.shutdown().await;
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                // Whichever side ends first ends the pair (drops both).
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (port, task)
}

fn pings(n: usize) -> Append {
    Append::new(
        "a",
        (0..n)
            .map(|i| Message::new("Ping", json!({ "i": i })))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cut_mid_way_is_unavailable_and_the_store_reconnects() {
    let server = PrivateRedis::start(&[]);
    let cut = Arc::new(AtomicBool::new(false));
    let (port, task) = proxy(server.port(), cut.clone()).await;
    let url = format!("redis://127.0.0.1:{port}/0?prefix=cut&timeout_ms=5000");
    let store = RedisStore::open(&url).await.unwrap();
    store.append(pings(200)).await.unwrap();
    let all = Query::new();
    assert_eq!(store.query(&all).await.unwrap().len(), 200);
    // The pub/sub connection is quiet: the next reply to come back is the
    // query's, a few kilobytes of records.
    cut.store(true, Ordering::SeqCst);
    let e = store.query(&all).await.unwrap_err();
    assert!(
        matches!(e, Error::Unavailable { .. }),
        "a cut reply must be transient: {e:?}"
    );
    assert!(!cut.load(Ordering::SeqCst), "the proxy did not cut a reply");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.query(&all).await {
            Ok(events) => {
                assert_eq!(events.len(), 200);
                break;
            }
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the store did not reconnect: {e}"),
        }
    }
    task.abort();
}
