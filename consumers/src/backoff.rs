//! Retry delays for session lanes.
//!
//! A failed delivery keeps its lane blocked for a while before the next
//! attempt. Exponential growth keeps a broken session from hammering its
//! worker, the cap bounds how stale a message can get, and jitter spreads
//! out retries of many sessions that failed together (e.g. a worker restart).
//! Randomness is supplied by the caller so this crate stays deterministic
//! and free of an RNG dependency.

use std::time::Duration;

/// How much randomness is applied to the exponential delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffJitter {
    /// Exactly the capped exponential delay; deterministic, mainly for tests.
    None,
    /// Uniform in `[0, delay]`: best at de-synchronising a thundering herd.
    #[default]
    Full,
    /// Uniform in `[delay / 2, delay]`: de-synchronises while guaranteeing a
    /// minimum wait.
    Equal,
}

/// Capped exponential backoff with optional jitter.
///
/// Exists so every lane computes retry delays the same way; the result is fed
/// into [`crate::LaneOutcome::RetryAfter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (attempt 0), before jitter.
    pub base: Duration,
    /// Upper bound on the delay before jitter; also bounds the jittered value.
    pub max: Duration,
    /// Randomisation applied to the capped delay.
    pub jitter: BackoffJitter,
}

impl Backoff {
    /// Builds a backoff policy; `base` larger than `max` is clamped to `max`.
    pub const fn new(base: Duration, max: Duration, jitter: BackoffJitter) -> Self {
        Self { base, max, jitter }
    }

    /// The capped exponential delay `min(max, base * 2^attempt)` without
    /// jitter. `attempt` counts previous failures, so attempt 0 yields `base`.
    pub fn capped_delay(&self, attempt: u32) -> Duration {
        let uncapped = 1u32
            .checked_shl(attempt)
            .and_then(|multiplier| self.base.checked_mul(multiplier));
        match uncapped {
            Some(delay) => delay.min(self.max),
            None => self.max,
        }
    }

    /// The delay to wait before retry number `attempt` (0-based), jittered
    /// with `random`, a uniformly distributed value supplied by the caller.
    ///
    /// Delays are computed in whole nanoseconds and saturate at
    /// `u64::MAX` nanoseconds (about 584 years).
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let capped = self.capped_delay(attempt);
        let capped_nanos = u64::try_from(capped.as_nanos()).unwrap_or(u64::MAX);
        let delay_nanos = match self.jitter {
            BackoffJitter::None => capped_nanos,
            BackoffJitter::Full => uniform_up_to(capped_nanos, random),
            BackoffJitter::Equal => {
                let guaranteed_nanos = capped_nanos / 2;
                guaranteed_nanos + uniform_up_to(capped_nanos - guaranteed_nanos, random)
            }
        };
        Duration::from_nanos(delay_nanos)
    }
}

/// Maps `random` uniformly onto `[0, upper_inclusive]` using the
/// multiply-shift technique (no modulo, negligible bias, no overflow).
fn uniform_up_to(upper_inclusive: u64, random: u64) -> u64 {
    let range = u128::from(upper_inclusive) + 1;
    let scaled = (u128::from(random) * range) >> 64;
    // `scaled < range <= 2^64`, so it always fits; saturate defensively.
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn capped_delay_doubles_until_the_cap() {
        let backoff = Backoff::new(BASE, MAX, BackoffJitter::None);
        assert_eq!(backoff.capped_delay(0), Duration::from_millis(100));
        assert_eq!(backoff.capped_delay(1), Duration::from_millis(200));
        assert_eq!(backoff.capped_delay(3), Duration::from_millis(800));
        assert_eq!(backoff.capped_delay(6), Duration::from_millis(6_400));
        assert_eq!(backoff.capped_delay(7), MAX);
        assert_eq!(backoff.capped_delay(31), MAX);
        assert_eq!(backoff.capped_delay(32), MAX);
        assert_eq!(backoff.capped_delay(u32::MAX), MAX);
    }

    #[test]
    fn no_jitter_ignores_random() {
        let backoff = Backoff::new(BASE, MAX, BackoffJitter::None);
        assert_eq!(backoff.delay(2, 0), Duration::from_millis(400));
        assert_eq!(backoff.delay(2, u64::MAX), Duration::from_millis(400));
    }

    #[test]
    fn full_jitter_spans_zero_to_capped_delay() {
        let backoff = Backoff::new(BASE, MAX, BackoffJitter::Full);
        assert_eq!(backoff.delay(1, 0), Duration::ZERO);
        assert_eq!(backoff.delay(1, u64::MAX), Duration::from_millis(200));
        let middle = backoff.delay(1, u64::MAX / 2);
        assert!(middle > Duration::from_millis(99) && middle < Duration::from_millis(101));
    }

    #[test]
    fn equal_jitter_spans_half_to_capped_delay() {
        let backoff = Backoff::new(BASE, MAX, BackoffJitter::Equal);
        assert_eq!(backoff.delay(1, 0), Duration::from_millis(100));
        assert_eq!(backoff.delay(1, u64::MAX), Duration::from_millis(200));
        assert_eq!(backoff.delay(20, 0), MAX / 2);
        assert_eq!(backoff.delay(20, u64::MAX), MAX);
    }

    #[test]
    fn jittered_delays_never_exceed_the_cap() {
        let backoff = Backoff::new(BASE, MAX, BackoffJitter::Full);
        let mut random = 0x9E37_79B9_7F4A_7C15_u64;
        for attempt in 0..64 {
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            assert!(backoff.delay(attempt, random) <= MAX);
        }
    }

    #[test]
    fn base_above_max_is_clamped() {
        let backoff = Backoff::new(Duration::from_secs(60), MAX, BackoffJitter::None);
        assert_eq!(backoff.delay(0, 0), MAX);
    }

    #[test]
    fn zero_base_yields_zero_delay() {
        let backoff = Backoff::new(Duration::ZERO, MAX, BackoffJitter::Equal);
        assert_eq!(backoff.delay(5, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn huge_durations_saturate_instead_of_overflowing() {
        let backoff = Backoff::new(Duration::MAX, Duration::MAX, BackoffJitter::Full);
        assert_eq!(backoff.delay(3, u64::MAX), Duration::from_nanos(u64::MAX));
        assert_eq!(backoff.delay(3, 0), Duration::ZERO);
    }

    #[test]
    fn uniform_mapping_hits_both_ends() {
        assert_eq!(uniform_up_to(0, u64::MAX), 0);
        assert_eq!(uniform_up_to(9, 0), 0);
        assert_eq!(uniform_up_to(9, u64::MAX), 9);
        assert_eq!(uniform_up_to(u64::MAX, u64::MAX), u64::MAX);
    }
}
