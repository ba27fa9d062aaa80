//! The command line every program gets: the global flags, the built-in
//! commands, and where a program's own flags and commands go. Generic over
//! `A`, the program's flags flattened into `worker` and `settle`, and `X`,
//! its own commands flattened beside the built-in ones.

use clap::{Args, Parser, Subcommand};

use crate::args::BrokerArgs;
use crate::stores;

/// What `--help` says after the first line: the stores and exit codes.
pub(crate) const LONG_HELP: &str =
    "Every command takes `--store URL` (default sqlite://act.db in the current
directory, or $ACT_STORE) and `--json` (one JSON object per line).

Store URLs and their options (user, password, paths and values are
percent-decoded; an unknown option is an error; docs/*.md give defaults):

  sqlite://PATH[?readers=N&busy_timeout_ms=N&watch_ms=N&queue_sync=normal|full]

  postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]  (or postgresql://)
    schema=NAME  pool_size=N  listen=true|false
    sslmode=disable|prefer|require|verify-ca|verify-full  sslrootcert=PATH
    sslcert=PATH  sslkey=PATH  connect_timeout=SECONDS  keepalives=1|0
    keepalives_idle=SECONDS  statement_timeout=MS
    idle_in_transaction_session_timeout=MS  application_name=NAME
    options=-c%20name%3Dvalue

  redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]  (rediss:// for TLS)
    prefix=NAME  timeout_ms=N  connect_timeout_ms=N  keepalive_s=N
    client_name=NAME  protocol=resp2|resp3  assume_noeviction=true
    tls_ca=PATH  tls_cert=PATH  tls_key=PATH  tls_insecure=true

  A CA file (sslrootcert=PATH, tls_ca=PATH) replaces the default roots
  (the system's for PostgreSQL, Mozilla's for Redis), as in libpq and
  redis-cli: only the CAs in the file are trusted.

  memory:  (in this process only)

Commands that only read (status, blocked, events, reactions) never create,
migrate or write a store; unblock, reset and retire need one that exists.

Exit codes: 0 success, 1 operational error (message on stderr), 2 usage
error.";

/// What `--help` says about traces, after [`LONG_HELP`].
#[cfg(feature = "opentelemetry")]
pub(crate) const TRACES_HELP: &str = "

Traces (OpenTelemetry): --otlp-endpoint URL (or $OTEL_EXPORTER_OTLP_ENDPOINT)
sends spans over OTLP/HTTP (protobuf) to URL/v1/traces, http:// only, as
service --service-name (or $OTEL_SERVICE_NAME; default the program's name).
An action and every reaction it causes are one trace, also across
processes. Spans are filtered by $ACT_TRACE (an env filter, default
info,act::app=debug,act::context=debug,act::broker::dispatch=debug: the
act.action, act.append and act.handle spans and every info span), apart
from $ACT_LOG. A
collector that is down never stalls a worker (failed exports are logged);
the last spans are sent at exit, waiting at most 5 s.";

/// Nothing about traces without the `opentelemetry` feature.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) const TRACES_HELP: &str = "";

/// The whole command line (name, about and version are set by
/// [`Program`](crate::Program)).
#[derive(Parser)]
pub(crate) struct Cli<A: Args, X: Subcommand> {
    /// The store: sqlite://PATH, postgres://USER@HOST[:PORT]/DB[?schema=NAME], redis://HOST[:PORT][/DB][?prefix=NAME] or memory: (options: see --help)
    #[arg(long, global = true, env = "ACT_STORE", default_value = stores::DEFAULT)]
    pub store: String,

    /// One JSON object per line instead of text (no progress bars).
    #[arg(long, global = true)]
    pub json: bool,

    /// Log lines on stderr as text, or as one JSON object each for log
    /// shippers (filtered by $ACT_LOG, default warn).
    #[arg(long, global = true, env = "ACT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[cfg(feature = "opentelemetry")]
    #[command(flatten)]
    pub otel: OtelArgs,

    #[command(subcommand)]
    pub command: Command<A, X>,
}

/// Where traces go (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
#[derive(Debug, Clone, Args)]
pub(crate) struct OtelArgs {
    /// Send traces to this OpenTelemetry collector, over OTLP/HTTP to
    /// URL/v1/traces (e.g. http://127.0.0.1:4318): one trace per action and
    /// the reactions it causes. Spans are filtered by $ACT_TRACE, apart from
    /// $ACT_LOG.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,

    /// The service.name of those traces (default: the program's name).
    #[arg(long, global = true, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub service_name: Option<String>,

    /// True when `otlp_endpoint` came from the environment (set after
    /// parsing).
    #[arg(skip)]
    pub endpoint_from_env: bool,
}

#[cfg(feature = "opentelemetry")]
impl OtelArgs {
    /// `None`: no traces. `Some(None)`: traces to the URL the environment
    /// names (act-otel reads `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` first, as
    /// the OpenTelemetry spec says). `Some(Some(url))`: to the command
    /// line's URL.
    pub fn endpoint(&self) -> Option<Option<&str>> {
        let url = self
            .otlp_endpoint
            .as_deref()
            .filter(|u| !u.trim().is_empty())?;
        Some((!self.endpoint_from_env).then_some(url))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

/// The commands: the program's own first, then the built-in ones.
#[derive(Subcommand)]
pub(crate) enum Command<A: Args, X: Subcommand> {
    #[command(flatten)]
    Own(X),
    /// Run the application's broker until SIGINT/SIGTERM, then shut down
    /// gracefully (finish in-flight handlers, release leases, exit 0).
    Worker(WorkerArgs<A>),
    /// Run a broker until every queue is caught up or blocked, then exit.
    Settle(SettleArgs<A>),
    /// One row per queue: position, head, lag, retries, next attempt, block, lease.
    Status(StatusArgs),
    /// The blocked queues and their errors.
    Blocked,
    /// Clear the block of queues: each resumes at the event that failed.
    Unblock(UnblockArgs),
    /// Move a queue to a position and replay the log from there (or skip ahead).
    Reset(ResetArgs),
    /// The reactions the store has registered: progress, start, retirement.
    Reactions,
    /// Retire reactions the application no longer has: their pending work is
    /// dropped (and counted) and no broker runs them again.
    Retire(RetireArgs),
    /// Print events from the log.
    Events(EventsArgs),
}

/// Arguments of `worker`.
#[derive(Args)]
pub(crate) struct WorkerArgs<A: Args> {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Seconds shutdown waits for in-flight handlers.
    #[arg(long, default_value_t = 10.0)]
    pub grace: f64,
    /// Name of this worker in leases (default: broker-PID-RANDOM).
    #[arg(long)]
    pub name: Option<String>,
    /// Print the worker's counters every this many seconds (a JSON line
    /// with `--json`).
    #[arg(long)]
    pub report_every: Option<f64>,
    /// Serve Prometheus metrics and health checks on this address, e.g.
    /// 127.0.0.1:9464 (port 0: any free port, printed at start): /metrics,
    /// /healthz (liveness), /readyz (readiness).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// /healthz fails when the broker's loop has not completed a turn for
    /// this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub stuck_after: f64,
    /// /readyz fails when work is due and no loop turn succeeded for this
    /// many seconds (or after 3 failed store calls in a row).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub stalled_after: f64,
    #[command(flatten)]
    pub app: A,
}

/// Arguments of `settle`.
#[derive(Args)]
pub(crate) struct SettleArgs<A: Args> {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub app: A,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this queue.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only queues with pending events.
    #[arg(long)]
    pub pending: bool,
    /// At most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Every column in full (by default long columns are cut to fit the
    /// terminal).
    #[arg(long)]
    pub wide: bool,
}

/// Arguments of `unblock`.
#[derive(Debug, Args)]
pub(crate) struct UnblockArgs {
    /// The queues to unblock.
    #[arg(required = true)]
    pub streams: Vec<String>,
}

/// Arguments of `reset`.
#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    /// The queue.
    pub stream: String,
    /// The new position: events after it are delivered (again), replayed
    /// from the log. 0 replays all; past the log's head is refused.
    #[arg(long, allow_negative_numbers = true)]
    pub to: i64,
    /// Replay into a queue that does not exist yet (one a reaction's
    /// resolver can target); without it, an unknown queue is an error.
    #[arg(long)]
    pub new: bool,
}

/// Arguments of `retire`.
#[derive(Debug, Args)]
pub(crate) struct RetireArgs {
    /// The reactions to retire.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only this stream (`*` and `?` make it a pattern, e.g. 'account-*').
    #[arg(long)]
    pub stream: Option<String>,
    /// Only events with an id above this.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many events (not counting those printed by --follow).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep printing new events as they are committed, until interrupted.
    #[arg(long)]
    pub follow: bool,
}
