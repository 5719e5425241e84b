//! The learner's configuration sections: `[grpo]`, `[dual_source]`, `[training]` and the
//! service settings `[learner]`.
//!
//! `Default` of every struct is the production default of DESIGN.md; unknown keys are
//! errors (serde `deny_unknown_fields`) and `validate()` names the first bad field with
//! its dotted path, so a typo in the one TOML file of a run fails before any work starts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{LearnerError, Result};

/// The per-token KL estimator between the policy and the reference (adapter off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `exp(ref − logp) − (ref − logp) − 1`: unbiased, always ≥ 0, low variance (Schulman's k3).
    #[default]
    K3,
    /// `logp − ref`: the plain log-ratio; unbiased but can be negative per token.
    K1,
}

/// How per-token losses become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// Mean over each sequence's tokens, then mean over sequences (the GRPO paper). Long
    /// completions get a smaller per-token weight.
    #[default]
    Grpo,
    /// Mean over all tokens of the batch (DAPO): every token weighs the same.
    Dapo,
    /// Sum over tokens divided by `sequences × max_new_tokens` (Dr. GRPO): a constant
    /// normaliser, so neither length nor batch composition rescales the gradient.
    DrGrpo,
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Stay at the peak rate.
    Constant,
    /// Straight line from the peak down to `min_lr_ratio × peak` at the last step.
    Linear,
    /// Half a cosine from the peak down to `min_lr_ratio × peak` at the last step.
    #[default]
    Cosine,
}

/// `[grpo]`: the reinforcement-learning term and the rollouts it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// G: completions sampled per prompt (one group).
    pub num_generations: usize,
    /// ε_low of the PPO clip: the ratio is clipped below at `1 − epsilon`.
    pub epsilon: f64,
    /// ε_high: the ratio is clipped above at `1 + epsilon_high`; `None` means `epsilon`.
    /// DAPO's "clip-higher" raises it (0.28) to keep exploration alive.
    pub epsilon_high: Option<f64>,
    /// Weight of the per-token KL to the reference policy (adapter off); 0 skips the
    /// reference forward entirely.
    pub kl_coef: f64,
    /// Which KL estimator.
    pub kl_estimator: KlEstimator,
    /// Divide group-centred rewards by the group's standard deviation (Dr. GRPO turns
    /// this off to avoid up-weighting nearly-solved or nearly-hopeless prompts).
    pub scale_rewards: bool,
    /// ε added to the group standard deviation before dividing.
    pub advantage_epsilon: f64,
    /// Token aggregation of the GRPO term.
    pub loss_aggregation: LossAggregation,
    /// Optimizer updates per rollout batch, against the same old log-probs (μ).
    pub num_iterations: usize,
    /// Groups sampled with an adapter more than this many versions behind the learner's
    /// are dropped (and counted).
    pub max_staleness: u64,
    /// DAPO dynamic sampling: groups whose rewards are all equal are left out of the GRPO
    /// term instead of diluting it with zero-advantage sequences.
    pub dynamic_sampling: bool,
    /// Truncated importance sampling: each token's GRPO loss is weighted by
    /// `min(exp(logp_old − logp_behaviour), cap)` to correct the drift between the rollout
    /// worker's sampler and the learner; `None` turns the correction off.
    pub importance_sampling_cap: Option<f64>,
    /// Rollout sampling temperature.
    pub temperature: f64,
    /// Rollout nucleus sampling threshold (1 = off).
    pub top_p: f64,
    /// Rollout top-k (0 = off).
    pub top_k: usize,
    /// Longest completion a rollout worker samples; also the Dr. GRPO normaliser.
    pub max_new_tokens: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            num_generations: 8,
            epsilon: 0.2,
            epsilon_high: None,
            kl_coef: 0.04,
            kl_estimator: KlEstimator::K3,
            scale_rewards: true,
            advantage_epsilon: 1e-4,
            loss_aggregation: LossAggregation::Grpo,
            num_iterations: 1,
            max_staleness: 1,
            dynamic_sampling: false,
            importance_sampling_cap: Some(2.0),
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 512,
        }
    }
}

impl GrpoConfig {
    /// The upper clip width: `epsilon_high`, or `epsilon` when unset.
    pub fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }

    /// Checks ranges; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.num_generations < 2 {
            return Err(LearnerError::config(
                "grpo.num_generations",
                format!(
                    "must be at least 2 (a group needs a spread of rewards), got {}",
                    self.num_generations
                ),
            ));
        }
        check_open_unit("grpo.epsilon", self.epsilon)?;
        if let Some(high) = self.epsilon_high
            && !(high.is_finite() && high > 0.0)
        {
            return Err(LearnerError::config(
                "grpo.epsilon_high",
                format!("must be a positive number, got {high}"),
            ));
        }
        check_non_negative("grpo.kl_coef", self.kl_coef)?;
        if !(self.advantage_epsilon.is_finite() && self.advantage_epsilon > 0.0) {
            return Err(LearnerError::config(
                "grpo.advantage_epsilon",
                format!("must be positive, got {}", self.advantage_epsilon),
            ));
        }
        if self.num_iterations == 0 {
            return Err(LearnerError::config(
                "grpo.num_iterations",
                "must be at least 1",
            ));
        }
        if let Some(cap) = self.importance_sampling_cap
            && !(cap.is_finite() && cap >= 1.0)
        {
            return Err(LearnerError::config(
                "grpo.importance_sampling_cap",
                format!("must be at least 1 (or absent to disable), got {cap}"),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(LearnerError::config(
                "grpo.temperature",
                format!("must be positive, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(LearnerError::config(
                "grpo.top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(LearnerError::config(
                "grpo.max_new_tokens",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[dual_source]`: how the three loss terms are weighted and where the two SFT sources
/// come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DualSourceConfig {
    /// α: weight of the GRPO term.
    pub alpha: f64,
    /// β: weight of the teacher-trace cross-entropy.
    pub beta: f64,
    /// γ: weight of the self-SFT cross-entropy on the policy's own best completions.
    pub gamma: f64,
    /// Whether the teacher's `<think>` block is part of the SFT target (else only the
    /// answer's code block is).
    pub use_teacher_thinking: bool,
    /// Self-SFT picks at most this many completions per group, best reward first.
    pub self_sft_top_k: usize,
    /// Self-SFT only picks completions whose reward is at least this.
    pub self_sft_reward_threshold: f64,
    /// Teacher traces (JSONL written by the synthesis stage).
    pub teacher_traces_path: PathBuf,
    /// Only traces whose code passed the problem's tests are used.
    pub passing_only: bool,
}

impl Default for DualSourceConfig {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: 0.3,
            gamma: 0.2,
            use_teacher_thinking: true,
            self_sft_top_k: 1,
            self_sft_reward_threshold: 1.0,
            teacher_traces_path: PathBuf::from("data/synthetic_traces.jsonl"),
            passing_only: true,
        }
    }
}

impl DualSourceConfig {
    /// Checks ranges; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("dual_source.alpha", self.alpha)?;
        check_non_negative("dual_source.beta", self.beta)?;
        check_non_negative("dual_source.gamma", self.gamma)?;
        if self.alpha + self.beta + self.gamma == 0.0 {
            return Err(LearnerError::config(
                "dual_source.alpha",
                "alpha, beta and gamma are all 0: nothing would be trained",
            ));
        }
        if !self.self_sft_reward_threshold.is_finite() {
            return Err(LearnerError::config(
                "dual_source.self_sft_reward_threshold",
                "must be a finite number",
            ));
        }
        Ok(())
    }
}

/// `[training]`: the optimizer, the batch shape, the schedule and the run's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Peak learning rate (after warm-up).
    pub learning_rate: f64,
    /// Steps of linear warm-up from 0 to the peak.
    pub warmup_steps: usize,
    /// Decay after warm-up.
    pub lr_schedule: LrSchedule,
    /// The rate decays to `min_lr_ratio × learning_rate` at the last step.
    pub min_lr_ratio: f64,
    /// Decoupled (AdamW) weight decay.
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Gradients are rescaled so their global L2 norm is at most this (0 = off).
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step; the batch is split evenly across them and the
    /// gradients summed, so the update equals the full-batch one.
    pub gradient_accumulation_steps: usize,
    /// Rollout groups (prompts) per training batch.
    pub prompts_per_step: usize,
    /// Teacher traces per training batch.
    pub teacher_traces_per_step: usize,
    /// Passes over the prompt set.
    pub epochs: usize,
    /// Stop after this many optimizer steps even if epochs remain; also the length of the
    /// learning-rate schedule when set.
    pub max_steps: Option<usize>,
    /// Write a checkpoint every this many optimizer steps (0 = only at the end).
    pub save_every_steps: usize,
    /// Keep this many most recent checkpoints.
    pub keep_last_checkpoints: usize,
    /// Seed of the data order, the teacher-trace order and LoRA dropout.
    pub seed: u64,
    /// Where checkpoints, the final adapter and metrics go.
    pub output_dir: PathBuf,
    /// Continue from the newest checkpoint in `output_dir`, if there is one.
    pub resume: bool,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            warmup_steps: 10,
            lr_schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            gradient_accumulation_steps: 4,
            prompts_per_step: 8,
            teacher_traces_per_step: 8,
            epochs: 1,
            max_steps: None,
            save_every_steps: 50,
            keep_last_checkpoints: 3,
            seed: 42,
            output_dir: PathBuf::from("outputs"),
            resume: false,
        }
    }
}

impl TrainingConfig {
    /// Checks ranges; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(LearnerError::config(
                "training.learning_rate",
                format!("must be positive, got {}", self.learning_rate),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(LearnerError::config(
                "training.min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        check_non_negative("training.weight_decay", self.weight_decay)?;
        check_unit_interval_open_top("training.adam_beta1", self.adam_beta1)?;
        check_unit_interval_open_top("training.adam_beta2", self.adam_beta2)?;
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return Err(LearnerError::config(
                "training.adam_epsilon",
                format!("must be positive, got {}", self.adam_epsilon),
            ));
        }
        check_non_negative("training.max_grad_norm", self.max_grad_norm)?;
        if self.gradient_accumulation_steps == 0 {
            return Err(LearnerError::config(
                "training.gradient_accumulation_steps",
                "must be at least 1",
            ));
        }
        if self.prompts_per_step == 0 {
            return Err(LearnerError::config(
                "training.prompts_per_step",
                "must be at least 1",
            ));
        }
        if self.epochs == 0 {
            return Err(LearnerError::config(
                "training.epochs",
                "must be at least 1",
            ));
        }
        if self.max_steps == Some(0) {
            return Err(LearnerError::config(
                "training.max_steps",
                "must be at least 1 when set",
            ));
        }
        if self.keep_last_checkpoints == 0 {
            return Err(LearnerError::config(
                "training.keep_last_checkpoints",
                "must be at least 1 (the newest checkpoint is what --resume needs)",
            ));
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(LearnerError::config(
                "training.output_dir",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// How the prompt-set file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptsFormat {
    /// MBPP rows (`task_id`, `text`, `code`, `test_list`, ...), as the data stage writes.
    #[default]
    Mbpp,
    /// openai/human-eval rows.
    Humaneval,
    /// tgrpo's own `Problem` records as JSON lines.
    Problems,
}

/// `[learner]`: the learner role's own settings (model, prompt set, service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The base model: an HF directory, a `.gguf` file, or `org/name[@revision]`.
    pub model: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Base-weight dtype: `auto` (f32 on CPU, bf16 on GPU), `f32`, `bf16` or `f16`. The
    /// LoRA weights and optimizer state are f32 whatever this says.
    pub dtype: String,
    /// The prompt set (the training problems) handed to rollout workers.
    pub prompts_path: PathBuf,
    /// Its format.
    pub prompts_format: PromptsFormat,
    /// The run whose adapters are broadcast (names the NATS bucket and subject).
    pub run_id: String,
    /// A prompt batch not fully answered within this many seconds is re-issued.
    pub lease_timeout_s: f64,
    /// Most prompts one `NextPrompts` call hands out.
    pub max_prompts_per_lease: usize,
    /// Accepted groups waiting for a training step, at most; a `SubmitGroups` beyond it
    /// waits (backpressure) rather than growing memory without bound.
    pub max_buffered_groups: usize,
    /// After training completes, the service keeps answering `finished` this many seconds
    /// so that polling workers learn the run is over instead of seeing a closed port.
    pub finish_linger_s: f64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            model: "Qwen/Qwen2.5-Coder-1.5B-Instruct".to_string(),
            device: "cpu".to_string(),
            dtype: "auto".to_string(),
            prompts_path: PathBuf::from("data/mbpp_train.jsonl"),
            prompts_format: PromptsFormat::Mbpp,
            run_id: "tgrpo".to_string(),
            lease_timeout_s: 600.0,
            max_prompts_per_lease: 8,
            max_buffered_groups: 256,
            finish_linger_s: 5.0,
        }
    }
}

impl ServiceConfig {
    /// Checks ranges; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.model.trim().is_empty() {
            return Err(LearnerError::config("learner.model", "is empty"));
        }
        parse_device_spec(&self.device)?;
        parse_dtype(&self.dtype, true)?;
        if self.run_id.trim().is_empty() {
            return Err(LearnerError::config("learner.run_id", "is empty"));
        }
        if !(self.lease_timeout_s.is_finite() && self.lease_timeout_s > 0.0) {
            return Err(LearnerError::config(
                "learner.lease_timeout_s",
                format!("must be positive, got {}", self.lease_timeout_s),
            ));
        }
        if self.max_prompts_per_lease == 0 {
            return Err(LearnerError::config(
                "learner.max_prompts_per_lease",
                "must be at least 1",
            ));
        }
        if self.max_buffered_groups == 0 {
            return Err(LearnerError::config(
                "learner.max_buffered_groups",
                "must be at least 1",
            ));
        }
        if !(self.finish_linger_s.is_finite() && self.finish_linger_s >= 0.0) {
            return Err(LearnerError::config(
                "learner.finish_linger_s",
                format!(
                    "must be a non-negative number, got {}",
                    self.finish_linger_s
                ),
            ));
        }
        Ok(())
    }
}

/// Every section the learner reads, as one value (what a checkpoint stores as `config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// `[grpo]`.
    pub grpo: GrpoConfig,
    /// `[dual_source]`.
    pub dual_source: DualSourceConfig,
    /// `[training]`.
    pub training: TrainingConfig,
    /// `[learner]`: service settings.
    pub learner: ServiceConfig,
}

impl LearnerConfig {
    /// Validates every section, and the rules that span sections.
    pub fn validate(&self) -> Result<()> {
        self.grpo.validate()?;
        self.dual_source.validate()?;
        self.training.validate()?;
        self.learner.validate()?;
        if self.learner.max_buffered_groups < self.training.prompts_per_step {
            return Err(LearnerError::config(
                "learner.max_buffered_groups",
                format!(
                    "{} is below training.prompts_per_step ({}): a batch could never fill",
                    self.learner.max_buffered_groups, self.training.prompts_per_step
                ),
            ));
        }
        Ok(())
    }

    /// Parses a TOML document holding (some of) the learner's sections; absent keys take
    /// their defaults, unknown keys are an error naming them. Does not validate.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|err| LearnerError::config("<toml>", err.to_string()))
    }
}

/// Which device a `device` string names (`None`: the CPU); see
/// [`tgrpo_policy::device::parse_device_spec`].
pub fn parse_device_spec(text: &str) -> Result<Option<usize>> {
    tgrpo_policy::device::parse_device_spec(text)
        .map_err(|message| LearnerError::config("learner.device", message))
}

/// Opens the device a `device` string names. A CUDA device in a build without the `cuda`
/// feature fails here, with candle's reason.
pub fn open_device(text: &str) -> Result<candle_core::Device> {
    tgrpo_policy::device::open_device(text)
        .map_err(|message| LearnerError::config("learner.device", message))
}

/// The base weights' dtype a `dtype` string names (`auto`: f32 on the CPU, bf16 on a GPU).
pub fn parse_dtype(text: &str, on_cpu: bool) -> Result<candle_core::DType> {
    tgrpo_policy::device::parse_dtype(text, on_cpu)
        .map_err(|message| LearnerError::config("learner.dtype", message))
}

fn check_open_unit(field: &str, value: f64) -> Result<()> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(LearnerError::config(
            field,
            format!("must be in (0, 1), got {value}"),
        ))
    }
}

fn check_unit_interval_open_top(field: &str, value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(LearnerError::config(
            field,
            format!("must be in [0, 1), got {value}"),
        ))
    }
}

fn check_non_negative(field: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(LearnerError::config(
            field,
            format!("must be a non-negative number, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let config = LearnerConfig::default();
        config.validate().unwrap();
        assert_eq!(config.dual_source.alpha, 1.0);
        assert_eq!(config.dual_source.beta, 0.3);
        assert_eq!(config.dual_source.gamma, 0.2);
        assert_eq!(config.grpo.epsilon, 0.2);
        assert_eq!(config.grpo.epsilon_high(), 0.2);
        assert_eq!(config.grpo.kl_estimator, KlEstimator::K3);
        assert_eq!(config.training.learning_rate, 5e-5);
    }

    #[test]
    fn toml_round_trip_and_partial_sections() {
        let config = LearnerConfig::from_toml_str(
            "[grpo]\nepsilon_high = 0.28\nloss_aggregation = \"dr_grpo\"\n[training]\nlr_schedule = \"linear\"\n",
        )
        .unwrap();
        assert_eq!(config.grpo.epsilon_high(), 0.28);
        assert_eq!(config.grpo.loss_aggregation, LossAggregation::DrGrpo);
        assert_eq!(config.training.lr_schedule, LrSchedule::Linear);
        assert_eq!(config.training.seed, 42);
        let text = toml::to_string(&config).unwrap();
        assert_eq!(LearnerConfig::from_toml_str(&text).unwrap(), config);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = LearnerConfig::from_toml_str("[grpo]\nepsilonn = 0.3\n").unwrap_err();
        assert!(err.to_string().contains("epsilonn"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut config = LearnerConfig::default();
        config.grpo.epsilon = 1.5;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("grpo.epsilon"), "{err}");

        let mut config = LearnerConfig::default();
        config.training.gradient_accumulation_steps = 0;
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("training.gradient_accumulation_steps"),
            "{err}"
        );

        let mut config = LearnerConfig::default();
        config.learner.max_buffered_groups = 4;
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("learner.max_buffered_groups"),
            "{err}"
        );

        let mut config = LearnerConfig::default();
        config.learner.device = "gpu".into();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("learner.device"), "{err}");

        let mut config = LearnerConfig::default();
        config.grpo.importance_sampling_cap = Some(0.5);
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("grpo.importance_sampling_cap"),
            "{err}"
        );
    }
}
