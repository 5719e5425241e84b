//! What the learner needs from a model: the [`TrainablePolicy`] trait.
//!
//! The learner's loop, checkpoints and service only see this trait; `crate::policy`
//! implements it for the `tgrpo-policy` decoder with a LoRA adapter. Keeping the seam
//! this narrow lets the loss and loop code be read (and tested) without the model's
//! internals, and lets another model implementation plug in.

use std::path::Path;

use candle_core::{Device, Tensor, Var};

use crate::error::Result;

/// One sequence to score: `tokens[score_from..]` get log-probs, each conditioned on every
/// token before it. `score_from` is the prompt length, at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSequence {
    /// Prompt followed by the completion (or SFT target).
    pub tokens: Vec<u32>,
    /// Index of the first scored token.
    pub score_from: usize,
}

/// Which policy a forward pass evaluates, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreMode {
    /// Adapter on, differentiable, LoRA dropout from the policy's seeded RNG: the pass
    /// whose loss is back-propagated.
    Train,
    /// Adapter on, no dropout, no gradient: the "old" log-probs of several updates per
    /// batch.
    Frozen,
    /// Adapter off, no gradient: the reference policy of the KL term.
    Reference,
}

/// Per-token results of a scoring pass, all `[sequences, columns]` f32 where column `j`
/// of row `b` is about token `score_from + j` of sequence `b`.
#[derive(Debug, Clone)]
pub struct TokenScores {
    /// Log-probs (differentiable in [`ScoreMode::Train`]).
    pub logprobs: Tensor,
    /// Entropy of each predictive distribution (detached), when requested.
    pub entropy: Option<Tensor>,
    /// 1 on real tokens, 0 on padding.
    pub mask: Tensor,
}

/// A model the learner can train: LoRA variables, scoring in three modes, a resumable
/// dropout RNG, and adapter I/O.
pub trait TrainablePolicy: Send {
    /// The device the model (and so the optimizer state) lives on.
    fn device(&self) -> Device;

    /// The trainable variables with their PEFT names, in a stable order. Only these are
    /// optimised; the base weights never change.
    fn trainable_vars(&self) -> Vec<(String, Var)>;

    /// Scores a batch of sequences with the logits divided by `temperature`: the rollout
    /// temperature for sampled completions (so the log-probs are under the distribution the
    /// behaviour log-probs came from, and importance weights are unbiased), 1 for SFT
    /// targets.
    fn score(
        &mut self,
        sequences: &[TokenSequence],
        mode: ScoreMode,
        temperature: f64,
        with_entropy: bool,
    ) -> Result<TokenScores>;

    /// The dropout RNG's state, for a checkpoint.
    fn rng_state(&self) -> serde_json::Value;

    /// Restores a state returned by [`TrainablePolicy::rng_state`].
    fn set_rng_state(&mut self, state: &serde_json::Value) -> Result<()>;

    /// The adapter as safetensors bytes with PEFT names: what the broadcast ships.
    fn adapter_bytes(&self) -> Result<Vec<u8>>;

    /// Writes the adapter as a PEFT directory (`adapter_model.safetensors` +
    /// `adapter_config.json`).
    fn save_adapter(&self, dir: &Path) -> Result<()>;

    /// Overwrites the trainable variables in place from a PEFT directory written by
    /// [`TrainablePolicy::save_adapter`] (the `Var`s stay the same objects, so an
    /// optimizer holding them keeps working).
    fn load_adapter(&mut self, dir: &Path) -> Result<()>;
}
