//! Prometheus metrics and health endpoints for a worker process.
//!
//! `act worker --metrics 127.0.0.1:9464` (and every program built on
//! [`Program`](crate::Program)) serves, on that address:
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | the Prometheus text exposition of every `act_*` metric ([`act::metrics`]); the store-wide gauges (lag per reaction, blocked queues, correlation lag) are sampled from the store at each scrape, at most once a second |
//! | `/healthz` | liveness: `200 ok`, or `503` with the reason when the broker's loop has not completed a turn for `stuck_after` (a hung call or a blocked runtime: restart the process) |
//! | `/readyz` | readiness: `200 ok`, or `503` with the reason when the broker is not running, the store failed `store_failures` calls in a row, or work is due and no turn succeeded for `stalled_after` |
//!
//! A store that is down makes `/readyz` fail but not `/healthz`: restarting
//! a worker does not bring a database back, and the worker recovers by
//! itself when the store does.
//!
//! A worker of your own that does not use [`Program`](crate::Program):
//!
//! ```no_run
//! # async fn run(app: act::Act) -> Result<(), act_cli::Error> {
//! use act_cli::observe::{serve, Rules};
//! let broker = app.broker(act::BrokerOptions::default());
//! let handle = broker.start();
//! let exporter = serve("127.0.0.1:9464".parse().unwrap(), app.store().clone(), broker, Rules::default()).await?;
//! println!("metrics on http://{}/metrics", exporter.addr());
//! # let _ = handle.shutdown().await; Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use act::broker::Health;
use act::{Broker, Store};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::Error;

/// Histogram buckets in seconds, for handler duration and commit-to-handler
/// latency: 1 ms to 60 s.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// When the health endpoints fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `/healthz` fails when no loop turn completed for this long (60 s).
    pub stuck_after: Duration,
    /// `/readyz` fails when work is due and no turn succeeded for this long
    /// (60 s).
    pub stalled_after: Duration,
    /// `/readyz` fails after this many failed store calls in a row (3).
    pub store_failures: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            stuck_after: Duration::from_secs(60),
            stalled_after: Duration::from_secs(60),
            store_failures: 3,
        }
    }
}

/// Liveness: `Err(reason)` when the loop is stuck.
pub fn liveness(health: &Health, rules: &Rules) -> Result<(), String> {
    if health.stuck(rules.stuck_after) {
        return Err(format!(
            "the broker's loop has not completed a turn for {:.0} s (limit {} s)",
            health.last_turn.elapsed().as_secs_f64(),
            rules.stuck_after.as_secs()
        ));
    }
    Ok(())
}

/// Readiness: `Err(reason)` when the broker is not running, the store is
/// unreachable, or due work is not making progress.
pub fn readiness(health: &Health, rules: &Rules) -> Result<(), String> {
    liveness(health, rules)?;
    if !health.running {
        return Err("the broker is not running".into());
    }
    if !health.store_reachable(rules.store_failures) {
        return Err(format!(
            "the store is unreachable: {} calls failed in a row{}",
            health.consecutive_store_failures,
            health
                .last_store_error
                .as_deref()
                .map(|e| format!(", the last with: {e}"))
                .unwrap_or_default()
        ));
    }
    if health.stalled(rules.stalled_after) {
        return Err(format!(
            "work is due and no loop turn succeeded for {:.0} s (limit {} s)",
            health.last_progress.elapsed().as_secs_f64(),
            rules.stalled_after.as_secs()
        ));
    }
    Ok(())
}

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (once; later calls return the same handle) and describes every act
/// metric. An error when another recorder is installed already.
pub fn install_recorder() -> Result<PrometheusHandle, Error> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| Error::Failed(format!("cannot set the histogram buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Failed(format!("cannot install the Prometheus recorder: {e}")))?;
    act::metrics::describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// A running metrics and health endpoint; stops when dropped.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// The address it listens on (the port chosen when `:0` was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    broker: Broker,
    rules: Rules,
    /// When the store-wide gauges were last sampled.
    sampled: tokio::sync::Mutex<Option<Instant>>,
}

/// Installs the recorder ([`install_recorder`]) and serves `/metrics`,
/// `/healthz` and `/readyz` on `addr` for `broker` (a clone of the broker
/// that runs; its health is shared) on `store`, until the returned
/// [`Exporter`] is dropped.
pub async fn serve(
    addr: SocketAddr,
    store: Arc<dyn Store>,
    broker: Broker,
    rules: Rules,
) -> Result<Exporter, Error> {
    let handle = install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Failed(format!("cannot listen on {addr} for metrics: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Failed(format!("cannot read the metrics address: {e}")))?;
    let state = Arc::new(State {
        handle,
        store,
        broker,
        rules,
        sampled: tokio::sync::Mutex::new(None),
    });
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "the metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Exporter { addr, task })
}

async fn answer<B>(state: &State, req: Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match req.uri().path() {
        "/metrics" => {
            sample(state).await;
            let mut r = text(StatusCode::OK, state.handle.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => match liveness(&state.broker.health(), &state.rules) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" => match readiness(&state.broker.health(), &state.rules) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz and /readyz are served here\n".into(),
        ),
    }
}

/// Samples the store-wide gauges, at most once a second and within 5 s; a
/// failure leaves the last figures and is logged.
async fn sample(state: &State) {
    let mut last = state.sampled.lock().await;
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
        return;
    }
    match tokio::time::timeout(
        Duration::from_secs(5),
        act::metrics::sample(&*state.store, &[]),
    )
    .await
    {
        Ok(Ok(_)) => *last = Some(Instant::now()),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sample the store's gauges"),
        Err(_) => tracing::warn!("sampling the store's gauges took over 5 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let now = Instant::now();
        Health {
            running: true,
            last_turn: now,
            last_progress: now,
            store_ok: true,
            consecutive_store_failures: 0,
            last_store_error: None,
            work_due: false,
            leases_held: 0,
        }
    }

    #[test]
    fn a_running_broker_is_live_and_ready() {
        let rules = Rules::default();
        assert_eq!(liveness(&health(), &rules), Ok(()));
        assert_eq!(readiness(&health(), &rules), Ok(()));
    }

    #[test]
    fn a_store_that_is_down_fails_readiness_but_not_liveness() {
        let rules = Rules::default();
        let mut h = health();
        h.store_ok = false;
        h.consecutive_store_failures = 3;
        h.last_store_error = Some("connection refused".into());
        assert_eq!(liveness(&h, &rules), Ok(()));
        let why = readiness(&h, &rules).unwrap_err();
        assert!(
            why.contains("unreachable") && why.contains("connection refused"),
            "{why}"
        );
        h.consecutive_store_failures = 2;
        assert_eq!(readiness(&h, &rules), Ok(()), "two failures are a blip");
    }

    #[test]
    fn a_stuck_loop_fails_both_and_stalled_work_fails_readiness() {
        let rules = Rules {
            stuck_after: Duration::from_millis(10),
            stalled_after: Duration::from_millis(10),
            store_failures: 3,
        };
        let mut h = health();
        h.last_progress = Instant::now() - Duration::from_secs(1);
        assert_eq!(readiness(&h, &rules), Ok(()), "nothing is due");
        h.work_due = true;
        assert!(readiness(&h, &rules).unwrap_err().contains("work is due"));
        assert_eq!(liveness(&h, &rules), Ok(()));
        h.last_turn = Instant::now() - Duration::from_secs(1);
        assert!(liveness(&h, &rules)
            .unwrap_err()
            .contains("has not completed a turn"));
        assert!(readiness(&h, &rules).is_err());
        h.running = false;
        assert_eq!(
            liveness(&h, &rules),
            Ok(()),
            "a loop that ended is not stuck"
        );
        assert!(readiness(&h, &rules).unwrap_err().contains("not running"));
    }
}
