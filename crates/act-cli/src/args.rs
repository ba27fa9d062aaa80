//! Flags shared by the built-in commands and by a program's own ones: the
//! broker's tuning and the value parsers behind them.

use std::time::Duration;

use act::BrokerOptions;
use clap::Args;

use crate::Error;

/// A whole number of at least 1 (a clap value parser: a bad value is a usage
/// error, exit code 2).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// Milliseconds, at least 1 (a clap value parser).
pub fn millis(s: &str) -> Result<u64, String> {
    positive(s).map(|n| n as u64)
}

/// Broker tuning shared by `worker` and `settle` (and the `act` binary's
/// `demo`): flatten it into a command with `#[command(flatten)]`.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Queues processed at once (at least 1).
    #[arg(long, default_value_t = 32, value_parser = positive)]
    pub concurrency: usize,
    /// Lease length in seconds (more than 0).
    #[arg(long, default_value_t = 30.0)]
    pub lease: f64,
    /// Events per queue per claim (at least 1).
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub batch: usize,
    /// Fallback polling period in milliseconds (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = millis)]
    pub poll_ms: u64,
}

impl BrokerArgs {
    /// The broker options these flags ask for. A `--lease` that is not a
    /// positive number of seconds is [`Error::Act`] with
    /// [`act::Error::InvalidInput`] (exit code 1, nothing written).
    pub fn options(&self) -> Result<BrokerOptions, Error> {
        let lease = seconds("--lease", self.lease)?;
        Ok(BrokerOptions::default()
            .concurrency(self.concurrency)
            .batch(self.batch)
            .lease(lease)
            .poll(Duration::from_millis(self.poll_ms)))
    }
}

/// A positive number of seconds from a flag.
pub(crate) fn seconds(flag: &str, s: f64) -> Result<Duration, Error> {
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        return Err(act::Error::InvalidInput(format!(
            "{flag} must be a positive number of seconds, got {s}"
        ))
        .into());
    }
    Ok(Duration::from_secs_f64(s))
}
