//! # act-otel
//!
//! OpenTelemetry for act: one request and every reaction it causes form one
//! trace, across processes and restarts, exported to a collector over
//! OTLP/HTTP.
//!
//! act stores the W3C trace context of the span that appends an event in
//! the event's meta ([`act::trace`]). With [`OtelPropagator`] those are the
//! real OpenTelemetry span contexts: an action's `act.action` span is the
//! parent of the `act.handle` span of each reaction to its events, whose
//! own actions are its children, and so on down the chain. [`install`]
//! builds the tracer provider with a batching OTLP/HTTP exporter (protobuf
//! bodies) and gives the `tracing` layer to put beside the log subscriber.
//!
//! A worker of your own:
//!
//! ```no_run
//! use std::sync::Arc;
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//! use tracing_subscriber::{EnvFilter, Layer};
//!
//! # async fn my_app(store: Arc<dyn act::Store>) -> act::Result<act::Act> { act::Act::builder(store).build() }
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Spans go to $OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces (default
//!     // http://localhost:4318/v1/traces), as service "my-worker".
//!     let otel = act_otel::install(&act_otel::Options::new("my-worker"))?;
//!     tracing_subscriber::registry()
//!         .with(tracing_subscriber::fmt::layer().with_filter(EnvFilter::new("warn")))
//!         // act.action, act.append, act.handle (debug) and your info spans
//!         .with(otel.layer().with_filter(act_otel::filter()))
//!         .init();
//!     act::trace::set_default_propagator(Arc::new(act_otel::OtelPropagator));
//!
//!     let app = my_app(Arc::new(act::MemoryStore::new())).await?;
//!     let broker = app.broker(act::BrokerOptions::default()).start();
//!     tokio::signal::ctrl_c().await?;
//!     broker.shutdown().await?;
//!
//!     // The spans still queued are sent (at most 5 s).
//!     tokio::task::spawn_blocking(move || otel.shutdown()).await??;
//!     Ok(())
//! }
//! ```
//!
//! `act_cli` programs (and the `act` binary) do all of this with
//! `--otlp-endpoint URL` (or `$OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! To continue a trace that arrives with a request, give its `traceparent`
//! to the action: `Invocation::by(actor).traced(ctx)` ([`act::Invocation`]).
//!
//! Costs: per action and per handler call, what [`OtelPropagator`] says and
//! an OpenTelemetry span (a few attributes, queued to the batch thread with
//! a channel send that never waits); no export ever runs on the caller's
//! thread or the async runtime. No TLS: send to a collector or agent over
//! `http://`.

#![warn(missing_docs)]

mod exporter;
mod propagator;

pub use exporter::{
    filter, install, Options, OtelGuard, DEFAULT_ENDPOINT, DEFAULT_FILTER, FILTER_ENV,
    SHUTDOWN_TIMEOUT,
};
pub use propagator::{to_span_context, to_trace_context, OtelPropagator};

/// What can go wrong installing or flushing the exporter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not an `http://` URL with a host (the password, if
    /// any, is hidden in `url`).
    #[error("bad OTLP endpoint {url:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The exporter could not be built (its HTTP client).
    #[error("cannot build the OTLP exporter for {url}: {reason}")]
    Exporter {
        /// The traces URL.
        url: String,
        /// The exporter's error.
        reason: String,
    },
    /// A flush or the shutdown failed: the collector refused the spans,
    /// could not be reached, or did not answer in time. The spans are lost;
    /// the process can go on (or exit).
    #[error("exporting spans to {url} failed: {reason}")]
    Export {
        /// The traces URL.
        url: String,
        /// The exporter's error.
        reason: String,
    },
}
