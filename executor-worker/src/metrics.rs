//! Prometheus metrics of the executor (`tgrpo_executor_*`), recorded through the
//! `metrics` facade: they cost nothing until a process installs a recorder
//! (`tgrpo --metrics-listen ADDR ...`), and every pool in a process adds to the same
//! series.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `tgrpo_executor_requests_total` | counter | score requests taken (gRPC or in-process) |
//! | `tgrpo_executor_verdicts_total{verdict}` | counter | responses by verdict (`passed`, `failed`, `error`, `timeout`) |
//! | `tgrpo_executor_rejected_total` | counter | `Score` calls answered `RESOURCE_EXHAUSTED` (queue full) |
//! | `tgrpo_executor_queue_depth` | gauge | executions waiting for a free sandbox slot |
//! | `tgrpo_executor_in_flight` | gauge | executions running in a slot now |
//! | `tgrpo_executor_execution_seconds` | histogram | wall time of one scored request |

use std::time::Duration;

use tgrpo_proto::executor::Verdict;

/// Counter: score requests taken.
pub const REQUESTS: &str = "tgrpo_executor_requests_total";
/// Counter: responses by `verdict` label.
pub const VERDICTS: &str = "tgrpo_executor_verdicts_total";
/// Counter: `Score` calls refused with `RESOURCE_EXHAUSTED`.
pub const REJECTED: &str = "tgrpo_executor_rejected_total";
/// Gauge: executions waiting for a slot.
pub const QUEUE_DEPTH: &str = "tgrpo_executor_queue_depth";
/// Gauge: executions running.
pub const IN_FLIGHT: &str = "tgrpo_executor_in_flight";
/// Histogram: seconds per scored request.
pub const EXECUTION_SECONDS: &str = "tgrpo_executor_execution_seconds";

/// The label value of a verdict (the proto name, lowercase, without its prefix).
pub fn verdict_label(verdict: i32) -> &'static str {
    match Verdict::try_from(verdict) {
        Ok(Verdict::Passed) => "passed",
        Ok(Verdict::Failed) => "failed",
        Ok(Verdict::Error) => "error",
        Ok(Verdict::Timeout) => "timeout",
        _ => "unspecified",
    }
}

pub(crate) fn request_taken() {
    ::metrics::counter!(REQUESTS).increment(1);
}

pub(crate) fn response_sent(verdict: i32, elapsed: Duration) {
    ::metrics::counter!(VERDICTS, "verdict" => verdict_label(verdict)).increment(1);
    ::metrics::histogram!(EXECUTION_SECONDS).record(elapsed.as_secs_f64());
}

pub(crate) fn rejected() {
    ::metrics::counter!(REJECTED).increment(1);
}

/// Adds one to a gauge for as long as it lives (so a cancelled wait or a panicking
/// execution still gives its count back).
pub(crate) struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub(crate) fn queued() -> Self {
        Self::new(QUEUE_DEPTH)
    }

    pub(crate) fn running() -> Self {
        Self::new(IN_FLIGHT)
    }

    fn new(name: &'static str) -> Self {
        ::metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        ::metrics::gauge!(self.0).decrement(1.0);
    }
}
