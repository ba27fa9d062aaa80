//! The `scale` workload: a backlog spread over many queues, drained by 1,
//! 2, 4 and 8 brokers at once, as separate `act bench-worker` processes on
//! durable stores (tasks in one process on memory).
//!
//! The backlog is what more workers can share: 20,000 `Ping` events on
//! 1,000 streams, each delivered to its stream's queue (`q-s*`) and to one
//! of 10 group queues (`g-*`): 40,000 reactions in 1,010 queues. (`drain`'s
//! app sends every event to one queue, `all`: by the order promise that
//! queue is one chain of claims and settles, however many brokers there
//! are, so its time bounds any run that includes it.) With `--delay-ms`, the workers reach the server
//! through a delaying TCP proxy ([`super::proxy`]), so every round trip
//! costs what it costs between machines.
//!
//! Besides reactions per second, each row reports what the delivery cost:
//! store calls (round trips) per reaction, counted by every worker; CPU per
//! reaction of the workers (from their go to their end), of the bench
//! process (the proxy's) and, on a local PostgreSQL, of the server (its
//! processes' times from `/proc`); how many of the machine's cores were busy
//! ([`super::cpu`]); and the share of the server's active sessions waiting
//! on a lock, sampled from `pg_stat_activity` every 10 ms.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cpu;
use super::namespace::Namespace;
use super::proxy::Proxy;
use super::workloads::{broker_options, counting, fill};
use super::{rss, Row, Settings};
use act_cli::Error;

/// The broker counts the workload runs.
pub(crate) const BROKERS: [usize; 4] = [1, 2, 4, 8];

/// `scale` with `workers` brokers.
pub(crate) async fn scale(s: &Settings, workers: usize) -> Result<Row, Error> {
    let ns = Namespace::fresh(&s.store, &format!("scale{workers}")).await?;
    let n = s.scaled(20_000);
    let per_stream = n.div_ceil(STREAMS).max(1);
    fill(
        &*ns.store,
        n,
        per_stream,
        "Ping",
        |i| format!("s{}", i / per_stream),
        |i| json!({ "i": i }),
    )
    .await?;
    rss::reset_peak();
    let mut extra = serde_json::Map::new();
    // Each branch stops its clock when the last broker is done, before it
    // reads `/proc` or stops the lock sampler.
    let (reactions, secs) = if ns.shared() {
        let proxy = match s.delay {
            Some(d) => Some(proxy_for(&ns.url, d)?),
            None => None,
        };
        let url = match &proxy {
            Some(p) => through(&ns.url, p.addr())?,
            None => ns.url.clone(),
        };
        let mut children = Vec::new();
        for _ in 0..workers {
            children.push(Worker::start(s, &url).await?);
        }
        // Every worker has opened the store: the clock starts now.
        let sampler = Sampler::start(&ns).await;
        let window = cpu::Snapshot::now(ns.backend() == "postgres");
        let started = Instant::now();
        for c in &mut children {
            c.go().await?;
        }
        let mut total = 0;
        let (mut calls, mut cpu) = (0u64, 0.0f64);
        let mut each = Vec::new();
        for c in children {
            let v = c.result().await?;
            total += v["reactions"].as_u64().unwrap_or(0);
            calls += v["store_calls"].as_u64().unwrap_or(0);
            cpu += v["cpu_s"].as_f64().unwrap_or(0.0);
            each.push(v);
        }
        let secs = started.elapsed().as_secs_f64();
        extra.insert("each_worker".into(), Value::Array(each));
        // The bench process's own CPU is the proxy's and the sampler's.
        window.record(&mut extra, "bench_cpu_us_per_reaction", total);
        let waits = match sampler {
            Some(s) => Some(s.stop().await),
            None => None,
        };
        if total > 0 {
            let per = |x: f64| x * 1e6 / total as f64;
            extra.insert(
                "store_calls_per_reaction".into(),
                json!(calls as f64 / total as f64),
            );
            extra.insert("broker_cpu_us_per_reaction".into(), json!(per(cpu)));
        }
        if let Some(w) = waits {
            extra.insert("lock_wait_share".into(), json!(w.share()));
            extra.insert("waits".into(), json!(w.events));
            extra.insert("samples".into(), json!(w.samples));
        }
        if let (Some(d), Some(p)) = (s.delay, &proxy) {
            extra.insert("delay_ms".into(), json!(d.as_secs_f64() * 1000.0));
            extra.insert("proxied_chunks".into(), json!(p.chunks()));
        }
        (total, secs)
    } else {
        let counter = Arc::new(AtomicU64::new(0));
        let app = scale_app(ns.store.clone(), &counter)?;
        let window = cpu::Snapshot::now(ns.backend() == "postgres");
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..workers {
            let broker = app.broker(broker_options(s).owner(format!("bench-{w}")));
            tasks.spawn(async move { broker.settle().await });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::Check(vec![format!("a broker task failed: {e}")]))??;
        }
        let secs = started.elapsed().as_secs_f64();
        let reactions = counter.load(Ordering::Relaxed);
        window.record(&mut extra, "broker_cpu_us_per_reaction", reactions);
        (reactions, secs)
    };
    let queues = (n.div_ceil(per_stream) + GROUPS) as u64;
    let mut row = Row::new(
        "scale",
        ns.backend(),
        reactions,
        queues,
        workers as u64,
        secs,
    );
    row.extra = extra;
    row.extra.insert("source_events".into(), json!(n));
    row.extra.insert("processes".into(), json!(ns.shared()));
    ns.destroy().await?;
    Ok(row)
}

/// Streams the backlog is spread over, and group queues.
const STREAMS: usize = 1_000;
const GROUPS: usize = 10;

/// The scale app: every `Ping` goes to its stream's queue and to one of
/// [`GROUPS`] group queues (by stream).
pub(crate) fn scale_app(
    store: Arc<dyn act::Store>,
    counter: &Arc<AtomicU64>,
) -> act::Result<act::Act> {
    act::Act::builder(store)
        .reaction(counting(
            act::Reaction::on("Ping")
                .named("per-stream")
                .to(|e| Some(format!("q-{}", e.stream))),
            counter,
        ))
        .reaction(counting(
            act::Reaction::on("Ping").named("by-group").to(|e| {
                let k: usize = e.stream.trim_start_matches('s').parse().unwrap_or(0);
                Some(format!("g-{}", k % GROUPS))
            }),
            counter,
        ))
        .build()
}

/// An `act bench-worker` process: it opens the store, says it is ready,
/// waits for the go, drains, and prints its figures.
struct Worker {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    /// Starts one and waits until it is ready.
    async fn start(s: &Settings, url: &str) -> Result<Self, Error> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().map_err(Error::Output)?;
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench-worker", "--store", url])
            .args(["--concurrency", &s.concurrency.to_string()])
            .args(["--batch", &s.batch.to_string()])
            .args(["--poll-ms", &s.poll_ms.to_string()])
            .env("ACT_LOG", "error")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Output)?;
        let missing = || Error::Check(vec!["a bench worker has no pipes".into()]);
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let mut w = Worker {
            child,
            stdin: Some(stdin),
            lines: tokio::io::BufReader::new(stdout).lines(),
        };
        match w.lines.next_line().await.map_err(Error::Output)? {
            Some(l) if l.contains("\"ready\"") => Ok(w),
            other => {
                let status = w.child.wait().await.map_err(Error::Output)?;
                Err(Error::Check(vec![format!(
                    "a bench worker did not get ready ({status}): {other:?}"
                )]))
            }
        }
    }

    async fn go(&mut self) -> Result<(), Error> {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"go\n").await.map_err(Error::Output)?;
        }
        Ok(())
    }

    /// Waits for the end and reads the figures it printed.
    async fn result(mut self) -> Result<Value, Error> {
        let last = self.lines.next_line().await.map_err(Error::Output)?;
        let status = self.child.wait().await.map_err(Error::Output)?;
        if !status.success() {
            return Err(Error::Check(vec![format!(
                "a bench worker failed: {status}"
            )]));
        }
        Ok(last
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_default())
    }
}

/// The host and port a PostgreSQL or Redis URL names.
fn server_of(url: &str) -> Result<SocketAddr, Error> {
    let u = url::Url::parse(url)
        .map_err(|e| Error::Check(vec![format!("--delay-ms: cannot read the URL: {e}")]))?;
    let default = match u.scheme() {
        "postgres" | "postgresql" => 5432,
        "redis" | "rediss" => 6379,
        other => {
            return Err(Error::Check(vec![format!(
                "--delay-ms needs a PostgreSQL or Redis store, not `{other}:`"
            )]))
        }
    };
    let host = u.host_str().unwrap_or("127.0.0.1");
    (host, u.port().unwrap_or(default))
        .to_socket_addrs()
        .map_err(Error::Output)?
        .next()
        .ok_or_else(|| Error::Check(vec![format!("--delay-ms: `{host}` has no address")]))
}

fn proxy_for(url: &str, delay: Duration) -> Result<Proxy, Error> {
    Proxy::start(server_of(url)?, delay).map_err(Error::Output)
}

/// `url` with its host and port replaced by the proxy's. The host stays a
/// name for TLS (`rediss://localhost`): only the port changes then.
fn through(url: &str, proxy: SocketAddr) -> Result<String, Error> {
    let mut u = url::Url::parse(url)
        .map_err(|e| Error::Check(vec![format!("--delay-ms: cannot read the URL: {e}")]))?;
    let named = u.host_str().is_some_and(|h| h == "localhost");
    if !named {
        u.set_host(Some(&proxy.ip().to_string()))
            .map_err(|e| Error::Check(vec![format!("--delay-ms: {e}")]))?;
    }
    u.set_port(Some(proxy.port()))
        .map_err(|()| Error::Check(vec!["--delay-ms: the URL takes no port".into()]))?;
    Ok(u.to_string())
}

/// Samples of the server's sessions in the workload's database.
struct Waits {
    /// Active sessions seen, summed over samples.
    active: u64,
    /// Of those, waiting on a lock, by wait event.
    events: BTreeMap<String, u64>,
    samples: u64,
}

impl Waits {
    fn share(&self) -> f64 {
        if self.active == 0 {
            return 0.0;
        }
        self.events.values().sum::<u64>() as f64 / self.active as f64
    }
}

/// Samples `pg_stat_activity` every 10 ms on a connection of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Waits>,
}

impl Sampler {
    async fn start(ns: &Namespace) -> Option<Sampler> {
        if ns.backend() != "postgres" {
            return None;
        }
        let (config, _) = act_pg::parse_url(&ns.url).ok()?;
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(conn);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut w = Waits {
                active: 0,
                events: BTreeMap::new(),
                samples: 0,
            };
            let sql = "SELECT wait_event_type, wait_event FROM pg_stat_activity
                       WHERE datname = current_database() AND state = 'active'
                         AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
            while !flag.load(Ordering::Relaxed) {
                if let Ok(rows) = client.query(sql, &[]).await {
                    w.samples += 1;
                    for r in rows {
                        w.active += 1;
                        let kind: Option<String> = r.get(0);
                        if kind.as_deref() == Some("Lock") {
                            let e: Option<String> = r.get(1);
                            *w.events
                                .entry(format!("Lock:{}", e.unwrap_or_default()))
                                .or_default() += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            w
        });
        Some(Sampler { stop, task })
    }

    async fn stop(self) -> Waits {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(Waits {
            active: 0,
            events: BTreeMap::new(),
            samples: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_url_keeps_everything_but_the_address() {
        let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            through("postgres://postgres@127.0.0.1:5432/test?schema=a", proxy).unwrap(),
            "postgres://postgres@127.0.0.1:40000/test?schema=a"
        );
        assert_eq!(
            through("rediss://localhost:6390?prefix=b", proxy).unwrap(),
            "rediss://localhost:40000?prefix=b"
        );
        assert!(server_of("sqlite:///tmp/x.db").is_err());
    }
}
