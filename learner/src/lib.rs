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

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod loss;
pub mod optim;

pub use error::{LearnerError, Result};
