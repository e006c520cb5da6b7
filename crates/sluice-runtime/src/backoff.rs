//! Backoff policy: how long to wait before the next attempt.
//!
//! `delay(attempt)` grows as `initial × multiplier^(attempt-1)`, capped at `max`, then jitter
//! is applied. Full jitter (the default) picks uniformly in `[0, capped]`, which spreads a
//! burst of failures best (AWS Architecture Blog, "Exponential Backoff And Jitter").
//! Invariant: every delay is finite and within `[0, max]`.

use std::time::Duration;

use rand::Rng;

/// How jitter is applied to the capped exponential delay `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, d]`.
    #[default]
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
    /// Exactly `d`.
    None,
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the second attempt (before jitter). Default 1 s.
    pub initial: Duration,
    /// Growth per attempt. Default 2.
    pub multiplier: f64,
    /// Cap. Default 5 minutes.
    pub max: Duration,
    /// Jitter. Default full.
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(300),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// Exponential backoff from `initial` up to `max`, doubling, with full jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }
    /// The same policy with another multiplier (values below 1 are treated as 1).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }
    /// The same policy with another jitter.
    #[must_use]
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before the capped exponential, without jitter, after `attempt` failed.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let secs = self.initial.as_secs_f64() * multiplier.powi(exponent);
        let max = self.max.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// The delay to wait after `attempt` (1-based) failed, jitter applied with `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rng.gen_range(0.0..=1.0)),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(rng.gen_range(0.0..=1.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::None)]
    }

    proptest! {
        #[test]
        fn every_delay_is_within_zero_and_the_cap(
            initial_ms in 0u64..100_000,
            max_ms in 0u64..10_000_000,
            multiplier in prop_oneof![0.0f64..100.0, Just(f64::NAN), Just(f64::INFINITY)],
            attempt in 0u32..u32::MAX,
            jitter in jitter(),
            seed in any::<u64>(),
        ) {
            let policy = Backoff { initial: Duration::from_millis(initial_ms), multiplier, max: Duration::from_millis(max_ms), jitter };
            let mut rng = SmallRng::seed_from_u64(seed);
            let delay = policy.delay(attempt, &mut rng);
            prop_assert!(delay <= policy.max, "delay {delay:?} above cap {:?}", policy.max);
            if jitter == Jitter::Equal {
                prop_assert!(delay >= policy.ceiling(attempt) / 2);
            }
        }

        #[test]
        fn without_jitter_delays_never_shrink_as_attempts_grow(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..10_000_000,
            multiplier in 1.0f64..10.0,
            attempt in 1u32..200,
        ) {
            let policy = Backoff { initial: Duration::from_millis(initial_ms), multiplier, max: Duration::from_millis(max_ms), jitter: Jitter::None };
            let mut rng = SmallRng::seed_from_u64(0);
            prop_assert!(policy.delay(attempt, &mut rng) <= policy.delay(attempt + 1, &mut rng));
        }
    }

    #[test]
    fn first_retry_waits_about_initial_and_growth_is_exponential() {
        let policy = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
            .jitter(Jitter::None);
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(policy.delay(1, &mut rng), Duration::from_millis(100));
        assert_eq!(policy.delay(2, &mut rng), Duration::from_millis(200));
        assert_eq!(policy.delay(4, &mut rng), Duration::from_millis(800));
        assert_eq!(policy.delay(30, &mut rng), Duration::from_secs(10));
    }
}
