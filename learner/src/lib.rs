//! The learner: the one process of tgrpo that changes weights.
//!
//! It turns scored rollout groups, teacher reasoning traces and the policy's own best
//! samples into LoRA updates with the composite objective of DESIGN.md
//! (`α·L_GRPO + β·L_TeacherSFT + γ·L_SelfSFT`), hands prompts to rollout workers, keeps
//! exact-resume checkpoints, writes per-step metrics and publishes every new adapter.
//!
//! # Layout
//! - [`config`]: the `[grpo]`, `[dual_source]`, `[training]` and `[learner]` sections.
//! - [`loss`]: the loss terms as pure tensor functions.
//! - [`optim`]: AdamW with checkpointable state, grad clipping, the lr schedule.
//! - [`groups`]: scored groups and SFT examples; dynamic sampling and self-SFT picks.
//! - [`teacher`]: teacher traces → SFT targets, and their resumable order.
//! - [`backend`]: the [`TrainablePolicy`] trait, the learner's one view of a model.
//! - [`policy`]: [`LoraPolicy`], the `tgrpo-policy` decoder with a trainable LoRA adapter.
//! - [`trainer`]: [`Learner`], one batch → `num_iterations` optimizer steps.
//! - [`checkpoint`]: atomic checkpoint directories, keep-last-K.
//! - [`metrics`]: the per-step JSONL metrics.
//! - [`prometheus`]: the live `tgrpo_learner_*` Prometheus series (step, losses, reward,
//!   groups by outcome, adapter version, tokens/s).
//! - [`scheduler`]: the prompt order over epochs, leases, idempotent answers.
//! - [`coordinator`]: prompts out, groups in (staleness, duplicates), batches to the trainer.
//! - [`service`]: [`TrainingRun`] (training thread, checkpoints, adapter publication) and
//!   the gRPC `Learner` service.
//! - [`role`]: the `tgrpo learner` role from its config ([`run`]).
//! - [`bench`](mod@bench): the learner-step benchmark behind `tgrpo bench learner`.
//! - `testing` (feature `testing`): a microsecond-fast toy policy for tests of code that
//!   drives a learner.

#![forbid(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod groups;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod policy;
pub mod prometheus;
pub mod role;
pub mod scheduler;
pub mod service;
pub mod teacher;
pub mod trainer;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use backend::{ScoreMode, TokenScores, TokenSequence, TrainablePolicy};
pub use config::{
    DualSourceConfig, GrpoConfig, KlEstimator, LearnerConfig, LossAggregation, LrSchedule,
    PromptsFormat, ServiceConfig, TrainingConfig,
};
pub use coordinator::Coordinator;
pub use error::{LearnerError, Result};
pub use groups::{Completion, ScoredGroup, SftExample};
pub use metrics::StepMetrics;
pub use policy::LoraPolicy;
pub use role::run;
pub use service::{AdapterSink, LearnerGrpc, RunSummary, StopReason, TrainingRun};
pub use trainer::{BatchContext, Learner, schedule_length};
