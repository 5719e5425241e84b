//! The learner-step benchmark behind `tgrpo bench learner`.
//!
//! One learner step on a GRPO batch of `sequences` random sequences (prompt + completion
//! tokens, groups of up to 8 with a spread of rewards): the reference forward (adapter
//! off, for the KL term), the train-mode forward and backward of the composite loss, grad
//! clipping and AdamW on the LoRA parameters — everything [`Learner::train_batch`] does.
//! The baseline, measured in the same process on the same batch and model, is the bare
//! minimum of a LoRA update: one train-mode forward, a mean negative log-likelihood,
//! backward and `candle_nn::AdamW`. Their ratio is the learner's overhead; tokens/s count
//! every token of every sequence (prompt and completion), as PyTorch benchmarks of
//! `B × T` batches do.
//!
//! Model shapes: the policy crate's tiny Qwen2, SmolLM2-135M and Qwen2.5-1.5B, with seeded
//! random weights (the arithmetic, not the values, is what is measured).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::Optimizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tgrpo_policy::loading::model_from_tensors;
pub use tgrpo_policy::shapes::ModelShape;
use tgrpo_policy::{LoadOptions, LoraConfig, ModelConfig, tiny};

use crate::backend::{ScoreMode, TokenSequence, TrainablePolicy};
use crate::config::{LearnerConfig, LrSchedule};
use crate::error::{LearnerError, Result};
use crate::groups::{Completion, ScoredGroup};
use crate::policy::{LoraPolicy, policy_error};
use crate::trainer::{BatchContext, Learner};

/// What to measure.
#[derive(Debug, Clone)]
pub struct LearnerBenchOptions {
    /// The model shape.
    pub shape: ModelShape,
    /// Sequences per step (B).
    pub sequences: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// Completion tokens per sequence (trained on).
    pub completion_len: usize,
    /// Timed steps of each kind.
    pub steps: usize,
    /// Untimed steps of each kind first.
    pub warmup: usize,
    /// The adapter (production: r 64, alpha 128, dropout 0.05, 7 targets).
    pub lora: LoraConfig,
    /// Where the model runs.
    pub device: Device,
    /// Base-weight dtype.
    pub dtype: DType,
    /// Seed of weights, tokens and adapter.
    pub seed: u64,
    /// Micro-batches per step (`training.gradient_accumulation_steps`; the baseline
    /// accumulates its gradients over the same split): what bounds activation memory.
    pub micro_batches: usize,
}

impl Default for LearnerBenchOptions {
    fn default() -> Self {
        Self {
            shape: ModelShape::Tiny,
            sequences: 16,
            prompt_len: 128,
            completion_len: 384,
            steps: 3,
            warmup: 1,
            lora: LoraConfig::default(),
            device: Device::Cpu,
            dtype: DType::F32,
            seed: 42,
            micro_batches: 1,
        }
    }
}

/// Results; times in seconds per step.
#[derive(Debug, Clone)]
pub struct LearnerBenchReport {
    /// The shape measured.
    pub shape: ModelShape,
    /// Base-model parameters.
    pub base_parameters: usize,
    /// LoRA parameters.
    pub adapter_parameters: usize,
    /// B.
    pub sequences: usize,
    /// B × T.
    pub tokens_per_step: usize,
    /// Completion tokens per step (the trained ones).
    pub trained_tokens_per_step: usize,
    /// Each timed learner step.
    pub learner_step_s: Vec<f64>,
    /// Each timed baseline step.
    pub baseline_step_s: Vec<f64>,
}

impl LearnerBenchReport {
    /// Median learner step time.
    pub fn learner_s(&self) -> f64 {
        median(&self.learner_step_s)
    }

    /// Median baseline step time.
    pub fn baseline_s(&self) -> f64 {
        median(&self.baseline_step_s)
    }

    /// Learner tokens per second (all B × T tokens).
    pub fn learner_tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.learner_s()
    }

    /// Baseline tokens per second.
    pub fn baseline_tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.baseline_s()
    }

    /// Learner step time over baseline step time.
    pub fn ratio(&self) -> f64 {
        self.learner_s() / self.baseline_s()
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs the benchmark.
pub fn bench_learner(options: &LearnerBenchOptions) -> Result<LearnerBenchReport> {
    if options.sequences == 0 || options.prompt_len == 0 || options.completion_len == 0 {
        return Err(LearnerError::config(
            "bench",
            "sequences, prompt_len and completion_len must be positive",
        ));
    }
    let model_config = options.shape.config();
    let weights = tiny::random_weights(&model_config, options.seed).map_err(policy_error)?;
    let load = LoadOptions {
        device: options.device.clone(),
        dtype: options.dtype,
    };
    let model = model_from_tensors(&model_config, weights, &load, options.shape.name())
        .map_err(policy_error)?;
    let base_parameters = model.num_parameters();
    let model = Arc::new(model);
    let policy = LoraPolicy::new(model, &options.lora, options.seed, options.shape.name())?;
    let adapter_parameters = policy.adapter().adapter().num_parameters();

    let group_size = options.sequences.clamp(2, 8);
    let groups = random_groups(options, &model_config, group_size);
    let mut config = LearnerConfig::default();
    config.grpo.num_generations = group_size;
    config.grpo.max_new_tokens = options.completion_len;
    config.dual_source.beta = 0.0;
    config.dual_source.gamma = 0.0;
    config.training.gradient_accumulation_steps = options.micro_batches.max(1);
    config.training.warmup_steps = 0;
    config.training.lr_schedule = LrSchedule::Constant;
    config.training.prompts_per_step = groups.len();
    let total = options.warmup + options.steps;
    let mut learner = Learner::new(policy, config.clone(), Vec::new(), total * 2)?;

    let mut learner_step_s = Vec::with_capacity(options.steps);
    for step in 0..total {
        let started = Instant::now();
        learner.train_batch(&groups, BatchContext::default())?;
        options.device.synchronize()?;
        if step >= options.warmup {
            learner_step_s.push(started.elapsed().as_secs_f64());
        }
    }

    let sequences: Vec<TokenSequence> = groups
        .iter()
        .flat_map(|group| {
            group.completions.iter().map(|completion| TokenSequence {
                tokens: [group.prompt_tokens.as_slice(), completion.tokens.as_slice()].concat(),
                score_from: group.prompt_tokens.len(),
            })
        })
        .collect();
    let trained_tokens_per_step = sequences.len() * options.completion_len;
    let policy = learner.policy_mut();
    let vars: Vec<candle_core::Var> = policy
        .trainable_vars()
        .into_iter()
        .map(|(_, var)| var)
        .collect();
    let optimizer_vars = vars.clone();
    let mut optimizer = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: config.training.learning_rate,
            ..Default::default()
        },
    )?;
    let mut baseline_step_s = Vec::with_capacity(options.steps);
    for step in 0..total {
        let started = Instant::now();
        let mut summed: Option<candle_core::backprop::GradStore> = None;
        for chunk in sequences.chunks(sequences.len().div_ceil(options.micro_batches.max(1))) {
            let scores = policy.score(chunk, ScoreMode::Train, config.grpo.temperature, false)?;
            let loss = ((scores.logprobs * &scores.mask)?.sum_all()?.neg()?
                / trained_tokens_per_step as f64)?;
            let grads = loss.backward()?;
            summed = Some(match summed {
                None => grads,
                Some(mut total) => {
                    for var in optimizer_vars.iter() {
                        if let (Some(add), Some(sum)) = (grads.get(var), total.get(var)) {
                            let sum = (sum + add)?;
                            total.insert(var, sum);
                        }
                    }
                    total
                }
            });
        }
        if let Some(grads) = summed {
            optimizer.step(&grads)?;
        }
        options.device.synchronize()?;
        if step >= options.warmup {
            baseline_step_s.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(LearnerBenchReport {
        shape: options.shape,
        base_parameters,
        adapter_parameters,
        sequences: sequences.len(),
        tokens_per_step: sequences.len() * (options.prompt_len + options.completion_len),
        trained_tokens_per_step,
        learner_step_s,
        baseline_step_s,
    })
}

/// `sequences` random sequences in groups of `group_size`, rewards alternating so that
/// no group is zero-std.
fn random_groups(
    options: &LearnerBenchOptions,
    model_config: &ModelConfig,
    group_size: usize,
) -> Vec<ScoredGroup> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed);
    let vocab = model_config.vocab_size as u32;
    let mut random_tokens =
        |count: usize| -> Vec<u32> { (0..count).map(|_| rng.random_range(0..vocab)).collect() };
    let mut groups = Vec::new();
    let mut remaining = options.sequences;
    while remaining > 0 {
        let size = remaining.min(group_size);
        remaining -= size;
        let prompt_tokens = random_tokens(options.prompt_len);
        let completions = (0..size)
            .map(|index| Completion {
                tokens: random_tokens(options.completion_len),
                behaviour_logprobs: vec![-8.0; options.completion_len],
                reward: (index % 2) as f64,
            })
            .collect();
        groups.push(ScoredGroup {
            key: format!("bench:{}", groups.len()),
            prompt_id: format!("bench-{}", groups.len()),
            prompt_tokens,
            completions,
            adapter_version: 0,
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs_and_reports_consistent_numbers() {
        let report = bench_learner(&LearnerBenchOptions {
            sequences: 4,
            prompt_len: 8,
            completion_len: 8,
            steps: 1,
            warmup: 0,
            lora: LoraConfig {
                r: 4,
                alpha: 8.0,
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(report.sequences, 4);
        assert_eq!(report.tokens_per_step, 64);
        assert_eq!(report.trained_tokens_per_step, 32);
        assert_eq!(
            (report.learner_step_s.len(), report.baseline_step_s.len()),
            (1, 1)
        );
        assert!(report.learner_tokens_per_s() > 0.0 && report.ratio() > 0.0);
        assert!(
            report.adapter_parameters > 0 && report.base_parameters > report.adapter_parameters
        );
        assert_eq!(
            ModelShape::parse("smollm2-135m"),
            Some(ModelShape::Smollm2_135m)
        );
        assert_eq!(ModelShape::parse("gpt"), None);
    }
}
