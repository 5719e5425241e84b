//! [`LoraPolicy`]: the `tgrpo-policy` decoder with a trainable LoRA adapter, as the
//! learner's [`TrainablePolicy`].
//!
//! The base weights are shared and frozen (an `Arc<Model>`, in whatever dtype they were
//! loaded); the adapter's A/B matrices are f32 `Var`s on the model's device, so AdamW
//! updates full-precision values even when the base runs in bf16. The reference policy of
//! the KL term is the same model with the adapter off: no second copy of the weights.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Var};
use tgrpo_policy::{
    DropoutRng, DropoutRngState, ForwardMode, LoraAdapter, LoraConfig, Model, ScoreSequence,
    TrainableAdapter,
};

use crate::backend::{ScoreMode, TokenScores, TokenSequence, TrainablePolicy};
use crate::error::{LearnerError, Result};

/// The decoder plus its trainable adapter and the seeded dropout RNG.
pub struct LoraPolicy {
    model: Arc<Model>,
    adapter: TrainableAdapter,
    dropout: DropoutRng,
    base_model_name: String,
}

impl std::fmt::Debug for LoraPolicy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LoraPolicy")
            .field("base_model_name", &self.base_model_name)
            .field(
                "adapter_parameters",
                &self.adapter.adapter().num_parameters(),
            )
            .field("dropout", &self.dropout.state())
            .finish()
    }
}

/// Maps the policy crate's errors into the learner's.
pub(crate) fn policy_error(err: tgrpo_policy::PolicyError) -> LearnerError {
    LearnerError::Policy(err.to_string())
}

impl LoraPolicy {
    /// A fresh PEFT-initialised adapter (B = 0, so training starts at the base model)
    /// seeded by `seed`, with LoRA dropout seeded by `seed` too. `base_model_name` goes
    /// into the adapter config (`base_model_name_or_path`).
    pub fn new(
        model: Arc<Model>,
        lora: &LoraConfig,
        seed: u64,
        base_model_name: impl Into<String>,
    ) -> Result<Self> {
        let adapter = TrainableAdapter::new(model.config(), lora, seed, model.device(), DType::F32)
            .map_err(policy_error)?;
        Ok(Self {
            model,
            adapter,
            dropout: DropoutRng::new(seed),
            base_model_name: base_model_name.into(),
        })
    }

    /// Continues training an existing adapter (e.g. a `final_model/` of an earlier run).
    pub fn from_adapter(
        model: Arc<Model>,
        adapter: &LoraAdapter,
        seed: u64,
        base_model_name: impl Into<String>,
    ) -> Result<Self> {
        let adapter = adapter
            .snapshot(model.device(), DType::F32)
            .and_then(|adapter| TrainableAdapter::from_adapter(&adapter))
            .map_err(policy_error)?;
        Ok(Self {
            model,
            adapter,
            dropout: DropoutRng::new(seed),
            base_model_name: base_model_name.into(),
        })
    }

    /// The frozen base model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The trainable adapter.
    pub fn adapter(&self) -> &TrainableAdapter {
        &self.adapter
    }

    /// A detached copy of the adapter's current values (to sample with while training
    /// goes on, in local mode).
    pub fn snapshot(&self) -> Result<LoraAdapter> {
        self.adapter.snapshot().map_err(policy_error)
    }
}

impl TrainablePolicy for LoraPolicy {
    fn device(&self) -> Device {
        self.model.device().clone()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.adapter.vars().to_vec()
    }

    fn score(
        &mut self,
        sequences: &[TokenSequence],
        mode: ScoreMode,
        temperature: f64,
        with_entropy: bool,
    ) -> Result<TokenScores> {
        let sequences: Vec<ScoreSequence> = sequences
            .iter()
            .map(|sequence| ScoreSequence {
                tokens: sequence.tokens.clone(),
                score_from: sequence.score_from,
            })
            .collect();
        let scores = match mode {
            ScoreMode::Train => self.model.score(
                &sequences,
                Some(self.adapter.adapter()),
                ForwardMode::Train {
                    dropout: Some(&mut self.dropout),
                },
                temperature,
                with_entropy,
            ),
            ScoreMode::Frozen => self.model.score(
                &sequences,
                Some(self.adapter.adapter()),
                ForwardMode::Inference,
                temperature,
                with_entropy,
            ),
            ScoreMode::Reference => self.model.score(
                &sequences,
                None,
                ForwardMode::Inference,
                temperature,
                with_entropy,
            ),
        }
        .map_err(policy_error)?;
        let logprobs = if mode == ScoreMode::Train {
            scores.logprobs
        } else {
            scores.logprobs.detach()
        };
        Ok(TokenScores {
            logprobs,
            entropy: scores.entropy,
            mask: scores.mask,
        })
    }

    fn rng_state(&self) -> serde_json::Value {
        serde_json::to_value(self.dropout.state()).unwrap_or(serde_json::Value::Null)
    }

    fn set_rng_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let state: DropoutRngState = serde_json::from_value(state.clone())
            .map_err(|err| LearnerError::Policy(format!("dropout rng state: {err}")))?;
        self.dropout = DropoutRng::from_state(state);
        Ok(())
    }

    fn adapter_bytes(&self) -> Result<Vec<u8>> {
        self.snapshot()?
            .to_safetensors_bytes(&self.base_model_name)
            .map_err(policy_error)
    }

    fn save_adapter(&self, dir: &Path) -> Result<()> {
        self.snapshot()?
            .save_peft(dir, &self.base_model_name)
            .map_err(policy_error)
    }

    fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let (adapter, _) =
            LoraAdapter::load_peft(dir, self.model.config(), self.model.device(), DType::F32)
                .map_err(|err| LearnerError::checkpoint(dir, err.to_string()))?;
        if adapter.config() != self.adapter.adapter().config() {
            return Err(LearnerError::checkpoint(
                dir,
                format!(
                    "adapter config {:?} differs from the run's {:?}",
                    adapter.config(),
                    self.adapter.adapter().config()
                ),
            ));
        }
        self.adapter.assign(&adapter).map_err(policy_error)
    }
}
