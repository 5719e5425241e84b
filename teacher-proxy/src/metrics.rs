//! Prometheus metrics of the teacher proxy (`tgrpo_teacher_*`), recorded through the
//! `metrics` facade (no-ops until a process installs a recorder: `tgrpo --metrics-listen
//! ADDR teacher-proxy ...`). [`MeterSnapshot`](crate::source::MeterSnapshot) stays the
//! in-process view (and the synthesis summary); these are the live series of a
//! long-running proxy, where the teacher's cost and health show.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `tgrpo_teacher_requests_total` | counter | traces asked for (cached or not) |
//! | `tgrpo_teacher_calls_total` | counter | HTTP requests sent to the teacher (retries included) |
//! | `tgrpo_teacher_retries_total` | counter | of those, retries |
//! | `tgrpo_teacher_cache_hits_total` | counter | traces served from the response cache |
//! | `tgrpo_teacher_failures_total` | counter | traces that failed (after every retry) |
//! | `tgrpo_teacher_tokens_total{kind}` | counter | `prompt` and `completion` tokens the teacher processed |
//! | `tgrpo_teacher_latency_seconds` | histogram | wall time of one uncached trace, retries included |

use std::time::Duration;

/// Counter: traces asked for.
pub const REQUESTS: &str = "tgrpo_teacher_requests_total";
/// Counter: HTTP requests sent to the teacher.
pub const CALLS: &str = "tgrpo_teacher_calls_total";
/// Counter: retried teacher requests.
pub const RETRIES: &str = "tgrpo_teacher_retries_total";
/// Counter: cache hits.
pub const CACHE_HITS: &str = "tgrpo_teacher_cache_hits_total";
/// Counter: failed traces.
pub const FAILURES: &str = "tgrpo_teacher_failures_total";
/// Counter: tokens, by `kind`.
pub const TOKENS: &str = "tgrpo_teacher_tokens_total";
/// Histogram: seconds per uncached trace.
pub const LATENCY_SECONDS: &str = "tgrpo_teacher_latency_seconds";

pub(crate) fn request() {
    ::metrics::counter!(REQUESTS).increment(1);
}

pub(crate) fn cache_hit() {
    ::metrics::counter!(CACHE_HITS).increment(1);
}

pub(crate) fn teacher_answered(attempts: u32, elapsed: Duration) {
    ::metrics::counter!(CALLS).increment(u64::from(attempts));
    ::metrics::counter!(RETRIES).increment(u64::from(attempts.saturating_sub(1)));
    ::metrics::histogram!(LATENCY_SECONDS).record(elapsed.as_secs_f64());
}

pub(crate) fn tokens(prompt: u64, completion: u64) {
    ::metrics::counter!(TOKENS, "kind" => "prompt").increment(prompt);
    ::metrics::counter!(TOKENS, "kind" => "completion").increment(completion);
}

pub(crate) fn failure() {
    ::metrics::counter!(FAILURES).increment(1);
}
