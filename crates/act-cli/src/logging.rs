//! Where log lines and traces go: the `tracing` subscriber [`Program::main`]
//! installs. Log lines go to stderr as text or JSON, filtered by `$ACT_LOG`
//! (default `warn`). With the `opentelemetry` feature and `--otlp-endpoint`
//! (or `$OTEL_EXPORTER_OTLP_ENDPOINT`), spans also go to an OpenTelemetry
//! collector over OTLP/HTTP, through a layer with its own filter
//! (`$ACT_TRACE`, default [`act_otel::DEFAULT_FILTER`]: `act.action`,
//! `act.append`, `act.handle` and every `info` span), and act's trace
//! propagator becomes [`act_otel::OtelPropagator`] for every application
//! built afterwards, so one action and the reactions it causes are one
//! trace, across processes.
//!
//! [`Program::main`]: crate::Program::main

use crate::cli::LogFormat;

/// The log filter: `$ACT_LOG`, default `warn`.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("ACT_LOG").unwrap_or_else(|_| "warn".into())
}

/// Log lines only, as without OpenTelemetry. Does nothing when a global
/// subscriber is already set.
fn logs_only(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter());
    let _ = match format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

/// What [`start`] installed: flush it at the end with [`Logging::finish`].
#[must_use]
pub(crate) struct Logging {
    #[cfg(feature = "opentelemetry")]
    otel: Option<act_otel::OtelGuard>,
}

impl Logging {
    /// Sends the spans still queued (at most [`act_otel::SHUTDOWN_TIMEOUT`];
    /// a failure is logged, it changes no exit code). Blocks: call it off
    /// the async runtime.
    pub(crate) fn finish(self) {
        #[cfg(feature = "opentelemetry")]
        if let Some(otel) = self.otel {
            if let Err(e) = otel.shutdown() {
                tracing::warn!(error = %e, "OpenTelemetry: the last spans may be lost");
            }
        }
    }
}

/// Installs the subscriber: log lines, and traces when asked. An error is a
/// bad `--otlp-endpoint` (or exporter), before anything ran.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn start(format: LogFormat) -> Result<Logging, String> {
    logs_only(format);
    Ok(Logging {})
}

/// Installs the subscriber: log lines, and traces when asked. An error is a
/// bad `--otlp-endpoint` (or exporter), before anything ran.
#[cfg(feature = "opentelemetry")]
pub(crate) fn start(
    format: LogFormat,
    args: &crate::cli::OtelArgs,
    program: &str,
) -> Result<Logging, String> {
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};

    let Some(endpoint) = args.endpoint() else {
        logs_only(format);
        return Ok(Logging { otel: None });
    };
    let service = args
        .service_name
        .clone()
        .unwrap_or_else(|| program.to_string());
    let mut options = act_otel::Options::new(service);
    if let Some(url) = endpoint {
        options = options.endpoint(url);
    }
    let otel = act_otel::install(&options).map_err(|e| e.to_string())?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(fmt),
        LogFormat::Json => Box::new(fmt.json()),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter()))
        .with(otel.layer().with_filter(act_otel::filter()))
        .try_init();
    if !act::trace::set_default_propagator(Arc::new(act_otel::OtelPropagator)) {
        tracing::debug!("a default trace propagator was already set: keeping it");
    }
    Ok(Logging { otel: Some(otel) })
}
