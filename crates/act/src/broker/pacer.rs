//! How long a broker waits after a failed store call: the one place that
//! decides it.
//!
//! Each consecutive failure doubles the pause, from `base` up to `cap`, with
//! up to 50 % added at random (never less, so a broker makes at most one
//! store call per `base` while the store is down: 10 per second with the
//! default 100 ms). The first success resets it. Each failure is logged once,
//! with how many calls have failed since the store was last reachable and
//! how long the next pause is; recovery is logged once too.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// Backoff of a broker's own store calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBackoff {
    /// First pause (also the shortest: at most one call per `base`).
    pub base: Duration,
    /// Longest pause: a broker notices a recovered store within this.
    pub cap: Duration,
}

impl Default for StoreBackoff {
    /// 100 ms doubling to 2 s: at most 10 failed calls per second, back
    /// within about 2 s of the store's return.
    fn default() -> Self {
        StoreBackoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }
}

impl StoreBackoff {
    /// The pause after `failures` consecutive failures (≥ 1), given a
    /// uniform sample `u` in [0, 1).
    pub fn pause(&self, failures: u32, u: f64) -> Duration {
        let base = self.base.max(Duration::from_millis(1));
        let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = doubled.min(self.cap.max(base));
        capped
            .mul_f64(1.0 + 0.5 * u.clamp(0.0, 1.0))
            .min(self.cap.max(base) * 3 / 2)
    }
}

/// Consecutive failures and the pause they call for.
#[derive(Debug)]
pub(super) struct Pacer {
    backoff: StoreBackoff,
    failures: u32,
    since: Option<Instant>,
    until: Option<Instant>,
}

impl Pacer {
    pub(super) fn new(backoff: StoreBackoff) -> Self {
        Pacer {
            backoff,
            failures: 0,
            since: None,
            until: None,
        }
    }

    /// Counts a failure of `step` and starts a pause.
    pub(super) fn failed(&mut self, step: &str, e: &Error) {
        self.failures = self.failures.saturating_add(1);
        let since = *self.since.get_or_insert_with(Instant::now);
        let pause = self.backoff.pause(self.failures, fastrand::f64());
        self.until = Some(Instant::now() + pause);
        if e.is_transient() {
            tracing::warn!(step, failures = self.failures, for_s = since.elapsed().as_secs_f64(),
                retry_in_ms = pause.as_millis() as u64, error = %e,
                "store unavailable; the broker retries with backoff");
        } else {
            tracing::error!(step, failures = self.failures, retry_in_ms = pause.as_millis() as u64,
                error = %e, "broker store call failed; retrying with backoff");
        }
    }

    /// A call went through: the pause ends.
    pub(super) fn succeeded(&mut self) {
        if self.failures > 0 {
            let down = self.since.map(|s| s.elapsed()).unwrap_or_default();
            tracing::info!(
                failures = self.failures,
                down_s = down.as_secs_f64(),
                "store reachable again"
            );
        }
        self.failures = 0;
        self.since = None;
        self.until = None;
    }

    /// Consecutive failures so far.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// When the current pause ends, if one is under way.
    pub(super) fn pausing(&self) -> Option<Instant> {
        self.until.filter(|t| *t > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_cap_and_never_undercut_the_base() {
        let b = StoreBackoff::default();
        let ms = |n, u| b.pause(n, u).as_millis();
        assert_eq!(
            [ms(1, 0.0), ms(2, 0.0), ms(3, 0.0), ms(5, 0.0), ms(9, 0.0)],
            [100, 200, 400, 1600, 2000]
        );
        assert_eq!(ms(1, 0.999_999), 149);
        assert!(ms(40, 0.999) <= 3000);
        for n in 1..50 {
            assert!(b.pause(n, 0.0) >= b.base, "{n}");
        }
    }
}
