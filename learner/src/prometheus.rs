//! Prometheus metrics of the learner (`tgrpo_learner_*`), recorded through the `metrics`
//! facade (no-ops until a process installs a recorder: `tgrpo --metrics-listen ADDR
//! learner ...`). The per-step JSONL ([`crate::metrics`]) stays the full record; these
//! are the live view a dashboard scrapes.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `tgrpo_learner_step` | gauge | optimizer step last taken |
//! | `tgrpo_learner_steps_total` | counter | optimizer steps taken (skipped ones too) |
//! | `tgrpo_learner_skipped_steps_total` | counter | steps skipped (non-finite loss/gradient) |
//! | `tgrpo_learner_loss{term}` | gauge | last step's loss: `total`, `grpo`, `teacher_sft`, `self_sft` |
//! | `tgrpo_learner_kl` | gauge | last step's mean per-token KL to the reference |
//! | `tgrpo_learner_grad_norm` | gauge | last step's gradient norm before clipping |
//! | `tgrpo_learner_reward_mean` | gauge | mean reward of the last batch's completions |
//! | `tgrpo_learner_tokens_per_second` | gauge | trained tokens per second of the last step |
//! | `tgrpo_learner_tokens_total` | counter | tokens trained on |
//! | `tgrpo_learner_adapter_version` | gauge | adapter version after the last step |
//! | `tgrpo_learner_groups_total{outcome}` | counter | submitted groups: `accepted`, `stale`, `duplicate`, `rejected`, `skipped` |

use crate::metrics::StepMetrics;

/// Gauge: optimizer step last taken.
pub const STEP: &str = "tgrpo_learner_step";
/// Counter: optimizer steps taken.
pub const STEPS: &str = "tgrpo_learner_steps_total";
/// Counter: steps skipped.
pub const SKIPPED_STEPS: &str = "tgrpo_learner_skipped_steps_total";
/// Gauge: last step's loss, by `term`.
pub const LOSS: &str = "tgrpo_learner_loss";
/// Gauge: last step's KL to the reference.
pub const KL: &str = "tgrpo_learner_kl";
/// Gauge: last step's gradient norm.
pub const GRAD_NORM: &str = "tgrpo_learner_grad_norm";
/// Gauge: mean reward of the last batch.
pub const REWARD_MEAN: &str = "tgrpo_learner_reward_mean";
/// Gauge: trained tokens per second of the last step.
pub const TOKENS_PER_SECOND: &str = "tgrpo_learner_tokens_per_second";
/// Counter: tokens trained on.
pub const TOKENS: &str = "tgrpo_learner_tokens_total";
/// Gauge: adapter version.
pub const ADAPTER_VERSION: &str = "tgrpo_learner_adapter_version";
/// Counter: submitted groups by `outcome`.
pub const GROUPS: &str = "tgrpo_learner_groups_total";

/// Records one optimizer step.
pub fn record_step(step: &StepMetrics) {
    ::metrics::gauge!(STEP).set(step.step as f64);
    ::metrics::counter!(STEPS).increment(1);
    if step.skipped {
        ::metrics::counter!(SKIPPED_STEPS).increment(1);
    }
    ::metrics::gauge!(LOSS, "term" => "total").set(step.loss);
    let terms = [
        ("grpo", step.loss_grpo),
        ("teacher_sft", step.loss_teacher_sft),
        ("self_sft", step.loss_self_sft),
    ];
    for (term, value) in terms {
        if let Some(value) = value {
            ::metrics::gauge!(LOSS, "term" => term).set(value);
        }
    }
    if let Some(kl) = step.kl {
        ::metrics::gauge!(KL).set(kl);
    }
    ::metrics::gauge!(GRAD_NORM).set(step.grad_norm);
    ::metrics::gauge!(REWARD_MEAN).set(step.reward_mean);
    ::metrics::gauge!(TOKENS_PER_SECOND).set(step.tokens_per_s);
    ::metrics::counter!(TOKENS).increment(step.tokens as u64);
    ::metrics::gauge!(ADAPTER_VERSION).set(step.adapter_version as f64);
}

/// Records the learner's answer to one submitted group (`outcome` is the label).
pub fn record_group(outcome: &'static str) {
    ::metrics::counter!(GROUPS, "outcome" => outcome).increment(1);
}

/// Records the adapter version (at start-up, and after a resume).
pub fn record_adapter_version(version: u64) {
    ::metrics::gauge!(ADAPTER_VERSION).set(version as f64);
}
