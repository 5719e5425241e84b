//! Exponential backoff with jitter, for every "the other side is away, try again" loop of
//! the worker (learner calls, executor scoring, NATS connection).
//!
//! The delay of attempt `n` is `min(max, initial · multiplier^n)` scaled down by a random
//! factor in `[1 − jitter, 1]`. The jitter matters when many workers lose the same learner
//! at once: without it they would all come back in the same instant, again and again.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Result, RolloutError};

/// Settings of a [`Backoff`] (`[rollout.backoff]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Delay before the first retry, in milliseconds.
    pub initial_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
    /// Growth factor per failed attempt (≥ 1).
    pub multiplier: f64,
    /// Fraction of each delay that is randomised away, in `[0, 1]`.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_ms: 200,
            max_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl BackoffConfig {
    /// Checks every field; `prefix` names the section in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if self.initial_ms == 0 {
            return Err(RolloutError::config(
                format!("{prefix}.initial_ms"),
                "must be positive",
            ));
        }
        if self.max_ms < self.initial_ms {
            return Err(RolloutError::config(
                format!("{prefix}.max_ms"),
                format!("{} is below initial_ms {}", self.max_ms, self.initial_ms),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(RolloutError::config(
                format!("{prefix}.multiplier"),
                format!("must be a number ≥ 1, got {}", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(RolloutError::config(
                format!("{prefix}.jitter"),
                format!("must be in [0, 1], got {}", self.jitter),
            ));
        }
        Ok(())
    }
}

/// The state of one retry loop: how many attempts failed so far.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A fresh backoff with an OS-seeded jitter.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, StdRng::from_os_rng())
    }

    /// A fresh backoff with a seeded jitter (tests).
    pub fn seeded(config: BackoffConfig, seed: u64) -> Self {
        Self::with_rng(config, StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: BackoffConfig, rng: StdRng) -> Self {
        Self {
            config,
            failures: 0,
            rng,
        }
    }

    /// Failed attempts since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(64) as i32;
        self.failures = self.failures.saturating_add(1);
        let ceiling = (self.config.initial_ms as f64 * self.config.multiplier.powi(exponent))
            .min(self.config.max_ms as f64);
        let factor = 1.0 - self.config.jitter * self.rng.random::<f64>();
        Duration::from_secs_f64(ceiling * factor / 1000.0)
    }

    /// Records a success: the next failure waits the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and sleeps for the backoff delay; `false` when `cancel` fired
    /// first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        sleep_or_cancel(delay, cancel).await
    }
}

/// Sleeps for `delay`; `false` when `cancel` fired first.
pub async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.5,
        }
    }

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_the_jitter_band() {
        let mut backoff = Backoff::seeded(config(), 7);
        let ceilings = [100.0, 200.0, 400.0, 800.0, 1000.0, 1000.0, 1000.0];
        for (attempt, ceiling) in ceilings.into_iter().enumerate() {
            let delay = backoff.next_delay().as_secs_f64() * 1000.0;
            assert!(
                delay <= ceiling + 1e-9 && delay >= ceiling * 0.5 - 1e-9,
                "attempt {attempt}: {delay} ms outside [{}, {ceiling}]",
                ceiling * 0.5
            );
        }
        assert_eq!(backoff.failures(), 7);
    }

    #[test]
    fn reset_starts_over_and_no_jitter_is_exact() {
        let mut backoff = Backoff::seeded(
            BackoffConfig {
                jitter: 0.0,
                ..config()
            },
            1,
        );
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_workers_apart() {
        let delays: Vec<Duration> = (0..8)
            .map(|seed| Backoff::seeded(config(), seed).next_delay())
            .collect();
        let distinct: std::collections::BTreeSet<Duration> = delays.iter().copied().collect();
        assert!(distinct.len() >= 6, "{delays:?}");
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut backoff = Backoff::seeded(config(), 3);
        for _ in 0..200 {
            assert!(backoff.next_delay() <= Duration::from_millis(1_000));
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = BackoffConfig {
            max_ms: 10,
            ..config()
        };
        let err = bad.validate("rollout.backoff").unwrap_err().to_string();
        assert!(err.contains("rollout.backoff.max_ms"), "{err}");
        let bad = BackoffConfig {
            jitter: 1.5,
            ..config()
        };
        assert!(
            bad.validate("x")
                .unwrap_err()
                .to_string()
                .contains("x.jitter")
        );
        assert!(config().validate("x").is_ok());
    }
}
