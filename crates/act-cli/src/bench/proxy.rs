//! A delaying TCP proxy for `act bench --delay-ms`: brokers reach the
//! database through it, and every chunk of bytes it forwards is held for the
//! delay in each direction, so a round trip costs what it costs between
//! machines (this kernel has no `netem` qdisc). Chunks keep their order and
//! are not held back by each other: a pipelined request pays the delay once,
//! as on a real network, and throughput is not capped.
//!
//! Threads, not tasks: `std::thread::sleep` holds a chunk for the delay to
//! within tens of microseconds, where a tokio timer rounds up to the next
//! millisecond. Two threads per direction of each connection, which mostly
//! sleep.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A running proxy; it stops accepting when dropped (connections it holds
/// end with their peers).
pub(crate) struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    chunks: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to
    /// `upstream`, each chunk held for `delay` in each direction.
    pub(crate) fn start(upstream: SocketAddr, delay: Duration) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let chunks = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), chunks.clone());
        thread::Builder::new()
            .name("bench-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let c = c.clone();
                    // A connection that cannot reach the server is closed;
                    // the client reports it.
                    if let Ok(server) = TcpStream::connect(upstream) {
                        let _ = connect(client, server, delay, c);
                    }
                }
            })?;
        Ok(Proxy { addr, stop, chunks })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Chunks forwarded so far, both directions.
    pub(crate) fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn connect(
    client: TcpStream,
    server: TcpStream,
    delay: Duration,
    chunks: Arc<AtomicU64>,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    pipe(
        client.try_clone()?,
        server.try_clone()?,
        delay,
        chunks.clone(),
    )?;
    pipe(server, client, delay, chunks)
}

/// Forwards `from` to `to`: a reader thread stamps each chunk with the time
/// it may leave, a writer thread sends it then.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    chunks: Arc<AtomicU64>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::Builder::new()
        .name("bench-proxy-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        chunks.fetch_add(1, Ordering::Relaxed);
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = from.shutdown(Shutdown::Read);
        })?;
    thread::Builder::new()
        .name("bench-proxy-write".into())
        .spawn(move || {
            while let Ok((at, bytes)) = rx.recv() {
                let now = Instant::now();
                if at > now {
                    thread::sleep(at - now);
                }
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_costs_twice_the_delay_and_bytes_arrive_in_order() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = echo.accept() {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let delay = Duration::from_millis(20);
        let proxy = Proxy::start(upstream, delay).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        for i in 0..5u8 {
            c.write_all(&[i]).unwrap();
        }
        while got.len() < 5 {
            let mut buf = [0u8; 16];
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "the proxy closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        // A lower bound only: a loaded machine may take longer, never less.
        assert!(
            started.elapsed() >= 2 * delay,
            "the echo came back in {:?}, under twice the delay",
            started.elapsed()
        );
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(proxy.chunks() >= 2);
    }
}
