//! When to try again: exponential backoff with jitter, and the server's Retry-After.
//!
//! Jitter matters here: 32 requests that fail together (a teacher restart) must not come
//! back together. "Equal jitter" keeps half of each delay fixed so a retry never fires
//! immediately, and spreads the other half uniformly.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::TeacherConfig;

/// How many times and how long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Base delay of the first retry.
    pub initial: Duration,
    /// Cap on the exponential part.
    pub max: Duration,
    /// Cap on a server-requested Retry-After.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The policy a [`TeacherConfig`] describes.
    pub fn from_config(config: &TeacherConfig) -> Self {
        Self {
            max_retries: config.max_retries,
            initial: Duration::from_millis(config.backoff_initial_ms),
            max: Duration::from_millis(config.backoff_max_ms),
            max_retry_after: Duration::from_secs_f64(config.max_retry_after_s),
        }
    }

    /// The wait before retry number `retry` (0 = the first retry): the exponential delay
    /// `min(max, initial * 2^retry)` with equal jitter, raised to the server's Retry-After
    /// (capped at `max_retry_after`) when it sent one.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let exponential = self
            .initial
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.max);
        let half = exponential / 2;
        let jittered = half + half.mul_f64(rng.random::<f64>());
        match retry_after {
            Some(asked) => jittered.max(asked.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

/// Parses a Retry-After header value: delay-seconds (integer, or a decimal as some proxies
/// send) or an HTTP-date, relative to `now`. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn delays_grow_stay_within_bounds_and_vary() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for retry in 0..40 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(retry.min(31)))
                .min(Duration::from_millis(1_000));
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                let delay = policy.delay(retry, None, &mut rng);
                assert!(
                    delay >= ceiling / 2,
                    "retry {retry}: {delay:?} < half of {ceiling:?}"
                );
                assert!(delay <= ceiling, "retry {retry}: {delay:?} > {ceiling:?}");
                seen.insert(delay);
            }
            assert!(
                seen.len() > 100,
                "retry {retry}: jitter produced only {} values",
                seen.len()
            );
        }
    }

    #[test]
    fn retry_after_raises_the_delay_but_is_capped() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(1);
        let delay = policy.delay(0, Some(Duration::from_secs(2)), &mut rng);
        assert_eq!(delay, Duration::from_secs(2));
        let delay = policy.delay(0, Some(Duration::from_secs(3600)), &mut rng);
        assert_eq!(delay, Duration::from_secs(5));
        // A Retry-After shorter than the backoff does not shorten it.
        let delay = policy.delay(4, Some(Duration::from_millis(1)), &mut rng);
        assert!(delay >= Duration::from_millis(500), "{delay:?}");
    }

    #[test]
    fn retry_after_formats() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 0.25 ", now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    }
}
