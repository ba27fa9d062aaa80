//! [`install`]: a tracer provider that batches spans and sends them to an
//! OTLP/HTTP collector, the `tracing` layer that feeds it, and the guard that
//! flushes it.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

use crate::Error;

/// Where a collector listens by default (OTLP/HTTP), as the OpenTelemetry
/// spec says.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

/// The spans the OpenTelemetry layer takes by default ([`filter`]): `info`
/// and up everywhere, plus act's debug spans that belong to a request's
/// trace (`act.append`, `act.handle`). act's other debug spans (`act.claim`,
/// `act.correlate`) are left out: a broker opens them on every loop turn,
/// idle or not, each a trace of its own.
pub const DEFAULT_FILTER: &str =
    "info,act::app=debug,act::context=debug,act::broker::dispatch=debug";

/// The environment variable that replaces [`DEFAULT_FILTER`] (an
/// `EnvFilter`, like `ACT_LOG` for the log lines).
pub const FILTER_ENV: &str = "ACT_TRACE";

/// How long [`OtelGuard::shutdown`] waits for the last export.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

const TRACES_PATH: &str = "/v1/traces";
const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// What [`install`] builds.
#[derive(Debug, Clone)]
pub struct Options {
    service_name: String,
    endpoint: Option<String>,
}

impl Options {
    /// Spans of the service `service_name` (the `service.name` resource;
    /// other resource attributes come from `OTEL_RESOURCE_ATTRIBUTES`), sent
    /// to the endpoint the environment names (see [`Options::endpoint`]).
    pub fn new(service_name: impl Into<String>) -> Self {
        Options {
            service_name: service_name.into(),
            endpoint: None,
        }
    }

    /// The collector's base URL, e.g. `http://127.0.0.1:4318`: spans go to
    /// its `/v1/traces`. Without it: `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// (the full URL), else `$OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL), else
    /// [`DEFAULT_ENDPOINT`]. Only `http://` (this crate has no TLS: send to a
    /// collector or agent beside the process).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The URL spans are sent to: the endpoint as [`Options::endpoint`]
    /// says, checked. Reads the environment.
    pub fn traces_url(&self) -> Result<String, Error> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (url, base) = match &self.endpoint {
            Some(url) => (url.clone(), true),
            None => match env(TRACES_ENDPOINT_ENV) {
                Some(url) => (url, false),
                None => (
                    env(ENDPOINT_ENV).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
                    true,
                ),
            },
        };
        let url = url.trim();
        let parsed = url::Url::parse(url).map_err(|e| Error::Endpoint {
            url: redact(url),
            reason: format!("{e} (write it as http://HOST:PORT)"),
        })?;
        let refuse = |reason: &str| Error::Endpoint {
            url: redact(url),
            reason: reason.to_string(),
        };
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(refuse(
                    "https is not supported (act-otel is built without TLS): \
                     send to a collector or agent over http://",
                ))
            }
            other => {
                return Err(refuse(&format!(
                    "the scheme is `{other}`, not http (write it as http://HOST:PORT)"
                )))
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(refuse("it names no host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(refuse("it has a query or a fragment"));
        }
        Ok(if base {
            format!("{}{TRACES_PATH}", parsed.as_str().trim_end_matches('/'))
        } else {
            parsed.to_string()
        })
    }
}

/// The URL with its password (if any) replaced, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Builds a tracer provider that sends spans to an OTLP/HTTP collector
/// (protobuf bodies) in batches, from a thread of its own: a span's end
/// costs a channel send that never waits (when the queue of 2,048 spans is
/// full, spans are dropped and one warning says so), and a collector that
/// is slow or down never stalls the caller; failed exports are retried
/// within the export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s), then
/// logged as `tracing` errors (target `opentelemetry_sdk`) and dropped.
/// Batch sizes and delays follow the `OTEL_BSP_*` variables (a batch at
/// most every 5 s by default).
///
/// Fails only on a bad endpoint ([`Error::Endpoint`]) or when the exporter
/// cannot be built; nothing is sent until spans end. Call it from anywhere
/// (it needs no async runtime). Then add [`OtelGuard::layer`] to the
/// subscriber and set [`crate::OtelPropagator`] as act's propagator; keep
/// the guard until the end and [`OtelGuard::shutdown`] it (dropping it does
/// the same).
///
/// The [crate docs](crate) show a whole worker.
pub fn install(options: &Options) -> Result<OtelGuard, Error> {
    let url = options.traces_url()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| Error::Exporter {
            url: redact(&url),
            reason: e.to_string(),
        })?;
    Ok(OtelGuard::new(
        &options.service_name,
        BatchSpanProcessor::builder(exporter).build(),
        redact(&url),
    ))
}

/// The filter of the OpenTelemetry layer: `$ACT_TRACE` when it is set and
/// parses, else [`DEFAULT_FILTER`]. A per-layer filter, independent of the
/// log lines' (`ACT_LOG=warn` still exports `act.handle` spans).
pub fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
}

/// An installed tracer provider: makes the `tracing` layer, and flushes the
/// spans still queued when shut down or dropped.
#[derive(Debug)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    url: String,
    done: bool,
}

impl OtelGuard {
    /// A guard over any span processor (what [`install`] does with its
    /// batching OTLP exporter; a test may give a simple processor over an
    /// exporter of its own). `url` only names the destination in messages.
    pub fn new(
        service_name: &str,
        processor: impl opentelemetry_sdk::trace::SpanProcessor + 'static,
        url: impl Into<String>,
    ) -> Self {
        let resource = Resource::builder()
            .with_service_name(service_name.to_string())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("act");
        OtelGuard {
            provider,
            tracer,
            url: url.into(),
            done: false,
        }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for
    /// this provider. Give it a per-layer filter ([`filter`]).
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// The tracer (for a layer configured otherwise).
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The provider.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Sends every span that ended so far, waiting for the export (at most
    /// 5 s). Blocks the calling thread: on an async runtime, call it through
    /// `spawn_blocking`.
    pub fn flush(&self) -> Result<(), Error> {
        self.provider.force_flush().map_err(|e| Error::Export {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    /// Sends the spans still queued and stops the exporter, waiting at most
    /// [`SHUTDOWN_TIMEOUT`]; spans that end later are dropped. Blocks the
    /// calling thread like [`OtelGuard::flush`]. An error says the last
    /// export failed or timed out (the process can exit anyway).
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.done = true;
        self.stop()
    }

    fn stop(&self) -> Result<(), Error> {
        self.provider
            .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
            .map_err(|e| Error::Export {
                url: self.url.clone(),
                reason: e.to_string(),
            })
    }
}

impl Drop for OtelGuard {
    /// Shuts down as [`OtelGuard::shutdown`] does, logging a failure.
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.stop() {
                tracing::warn!(error = %e, "OpenTelemetry: the last spans may be lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(endpoint: &str) -> Result<String, Error> {
        Options::new("t").endpoint(endpoint).traces_url()
    }

    #[test]
    fn an_endpoint_is_a_base_url_spans_go_to_its_v1_traces() {
        assert_eq!(
            url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(url(" http://c/otlp/ ").unwrap(), "http://c/otlp/v1/traces");
    }

    #[test]
    fn a_bad_endpoint_is_a_clear_error_with_the_password_hidden() {
        for (bad, why) in [
            ("not a url", "relative URL"),
            ("127.0.0.1:4318", "write it as http://HOST:PORT"),
            ("localhost:4318", "the scheme is `localhost`"),
            ("ftp://h/", "scheme is `ftp`"),
            ("https://h:4318", "https is not supported"),
            ("http://h:4318/?x=1", "query"),
            ("http://:99999", ""),
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with("bad OTLP endpoint"), "{bad}: {e}");
        }
        let e = url("https://u:secret@h/").unwrap_err().to_string();
        assert!(!e.contains("secret") && e.contains("***"), "{e}");
    }
}
