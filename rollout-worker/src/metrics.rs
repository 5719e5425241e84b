//! Prometheus metrics of a rollout worker (`tgrpo_rollout_*`), recorded through the
//! `metrics` facade (no-ops until a process installs a recorder: `tgrpo --metrics-listen
//! ADDR rollout ...`). [`WorkerStats`](crate::worker::WorkerStats) stays the in-process
//! view; these are what a dashboard scrapes across many workers.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `tgrpo_rollout_groups_total{outcome}` | counter | groups the learner answered: `accepted`, `stale`, `duplicate`, `skipped`, `rejected` |
//! | `tgrpo_rollout_completions_total` | counter | completions sampled |
//! | `tgrpo_rollout_tokens_total` | counter | tokens generated |
//! | `tgrpo_rollout_batch_seconds` | histogram | wall time to sample and score one leased batch |
//! | `tgrpo_rollout_adapter_version` | gauge | adapter version sampled with (0: the base model) |
//! | `tgrpo_rollout_adapters_total{result}` | counter | adapters offered: `installed`, `failed` |
//! | `tgrpo_rollout_executor_errors_total` | counter | failed scoring calls (each retried) |
//! | `tgrpo_rollout_learner_errors_total` | counter | failed learner calls (each retried) |

/// Counter: groups answered by the learner, by `outcome`.
pub const GROUPS: &str = "tgrpo_rollout_groups_total";
/// Counter: completions sampled.
pub const COMPLETIONS: &str = "tgrpo_rollout_completions_total";
/// Counter: tokens generated.
pub const TOKENS: &str = "tgrpo_rollout_tokens_total";
/// Histogram: seconds to sample and score one batch.
pub const BATCH_SECONDS: &str = "tgrpo_rollout_batch_seconds";
/// Gauge: adapter version sampled with.
pub const ADAPTER_VERSION: &str = "tgrpo_rollout_adapter_version";
/// Counter: adapters offered, by `result`.
pub const ADAPTERS: &str = "tgrpo_rollout_adapters_total";
/// Counter: failed scoring calls.
pub const EXECUTOR_ERRORS: &str = "tgrpo_rollout_executor_errors_total";
/// Counter: failed learner calls.
pub const LEARNER_ERRORS: &str = "tgrpo_rollout_learner_errors_total";

pub(crate) fn group_answered(outcome: &'static str) {
    ::metrics::counter!(GROUPS, "outcome" => outcome).increment(1);
}

pub(crate) fn batch_sampled(completions: u64, tokens: u64, seconds: f64) {
    ::metrics::counter!(COMPLETIONS).increment(completions);
    ::metrics::counter!(TOKENS).increment(tokens);
    ::metrics::histogram!(BATCH_SECONDS).record(seconds);
}

pub(crate) fn adapter_installed(version: u64) {
    ::metrics::counter!(ADAPTERS, "result" => "installed").increment(1);
    ::metrics::gauge!(ADAPTER_VERSION).set(version as f64);
}

pub(crate) fn adapter_failed() {
    ::metrics::counter!(ADAPTERS, "result" => "failed").increment(1);
}

pub(crate) fn executor_error() {
    ::metrics::counter!(EXECUTOR_ERRORS).increment(1);
}

pub(crate) fn learner_error() {
    ::metrics::counter!(LEARNER_ERRORS).increment(1);
}
