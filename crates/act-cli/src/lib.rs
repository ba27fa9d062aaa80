//! # act_cli
//!
//! The operator command line of act as a library: a program that names its
//! application gets a worker process and every operator command for it, in
//! a few lines.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! fn my_app(store: Arc<dyn act::Store>) -> act::Result<act::Act> {
//!     act::Act::builder(store).build() // .reaction(…) for each reaction
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     act_cli::Program::new("my-worker", my_app).main()
//! }
//! ```
//!
//! That binary has these commands, with the flags, output (`--json`: one
//! JSON object per line) and exit codes of the `act` binary:
//!
//! | command | what it does |
//! |---|---|
//! | `worker` | runs the application's broker until SIGINT/SIGTERM, then shuts down gracefully (`--name`, `--grace`, `--report-every`, broker tuning) |
//! | `settle` | runs a broker until every queue is caught up or blocked |
//! | `status`, `blocked` | the queues, the blocked ones |
//! | `unblock`, `reset` | clear a block; move a queue and replay |
//! | `events` | print (or `--follow`) the log |
//! | `reactions`, `retire` | the reactions the store knows; retire one |
//!
//! The store is `--store URL` or `$ACT_STORE` ([`stores`] lists the URLs);
//! logs go to stderr, filtered by `$ACT_LOG` (default `warn`). With the
//! `opentelemetry` feature (on by default), `--otlp-endpoint URL` (or
//! `$OTEL_EXPORTER_OTLP_ENDPOINT`) also sends traces to an OpenTelemetry
//! collector over OTLP/HTTP, as service `--service-name` (default the
//! program's name): one trace per action and every reaction it causes,
//! across processes, with spans filtered by `$ACT_TRACE` (default
//! `act_otel::DEFAULT_FILTER`); the application needs no change.
//!
//! Exit codes: 0 success, 1 operational error (one line on stderr), 2 usage
//! error.
//!
//! A program's own flags for `worker` and `settle` come with
//! [`Program::with_args`], its own commands with [`Program::commands`].
//!
//! This crate sets no global allocator; a program chooses its own.

#![warn(missing_docs)]

pub mod args;
mod cli;
mod commands;
mod error;
mod logging;
pub mod observe;
pub mod output;
mod program;
pub mod stores;

pub use error::Error;
pub use program::{Globals, NoArgs, NoCommands, Program};
