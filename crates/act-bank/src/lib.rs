//! # act-bank
//!
//! The demo application of act, used by `act demo`, the tests of every
//! backend and the benchmarks: accounts with deposits and withdrawals (a
//! balance never goes below zero), an audit trail per account and a running
//! total, both written by reactions.
//!
//! - [`model`]: the states, events and actions.
//! - [`reactions`]: the `audit` (dynamic) and `totals` (static) reactions.
//! - [`workload`]: a seeded random workload, safe to run from several
//!   processes on one store at once.
//! - [`mod@verify`]: checks the log after delivery: one receipt per source event
//!   per queue, in source order, poisoned queues blocked, nothing else.

pub mod model;
pub mod reactions;
pub mod verify;
pub mod workload;

pub use reactions::{app, app_with, Options};
pub use verify::{verify, Verdict};
pub use workload::{Report, Workload};
