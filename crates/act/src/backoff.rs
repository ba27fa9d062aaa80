//! Exponential backoff with jitter for failed reactions.
//!
//! The delay before retry `n` (1 for the first retry) is
//! `min(cap, base · factor^(n-1))`, then spread by ± `jitter` (a fraction) and
//! kept within `[0, cap]`. The broker hands the delay to the store, which
//! stores the next attempt time on its own clock, so every broker honours it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backoff settings of a reaction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Growth per retry (2.0 doubles).
    pub factor: f64,
    /// Longest delay.
    pub cap: Duration,
    /// Spread as a fraction of the delay: 0.2 draws from ±20%.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling, capped at 30 s, ±20%.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry `n` (n ≥ 1), with jitter from `fastrand`.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, fastrand::f64())
    }

    /// The delay before retry `n` with a given uniform sample `u` in [0, 1):
    /// deterministic, for tests and for callers with their own RNG.
    pub fn delay_with(&self, n: u32, u: f64) -> Duration {
        let cap = self.cap.as_secs_f64();
        let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let raw = self.base.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let capped = if raw.is_finite() { raw.min(cap) } else { cap };
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = capped * jitter * (2.0 * u.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((capped + spread).clamp(0.0, cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_secs(1),
            jitter: 0.0,
        };
        let delays: Vec<u128> = (1..=6).map(|n| ms(b.delay_with(n, 0.5))).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(1000),
            factor: 2.0,
            cap: Duration::from_secs(10),
            jitter: 0.2,
        };
        assert_eq!(ms(b.delay_with(1, 0.0)), 800);
        assert_eq!(ms(b.delay_with(1, 0.5)), 1000);
        assert!(ms(b.delay_with(1, 0.999_999)) <= 1200);
        // at the cap, jitter only shortens
        assert_eq!(ms(b.delay_with(30, 0.999)), 10_000);
        for n in 1..40 {
            let d = b.delay(n);
            assert!(d <= b.cap, "retry {n}: {d:?}");
        }
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.delay_with(u32::MAX, 0.5), b.cap);
    }
}
