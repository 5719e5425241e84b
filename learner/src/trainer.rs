//! The training loop's core: [`Learner::train_batch`] turns one batch of scored groups
//! (plus the teacher traces and self-SFT picks that go with it) into `num_iterations`
//! optimizer steps on the LoRA variables, and [`Learner::save_checkpoint`] /
//! [`Learner::restore`] make that resumable bit for bit.
//!
//! One step, for each of `gradient_accumulation_steps` micro-batches (an even split of
//! every source), runs the train-mode forward of the GRPO completions, the teacher targets
//! and the self-SFT targets, forms `α·GRPO + β·teacher + γ·self` with every denominator
//! taken over the WHOLE batch, back-propagates and sums the gradients. Then: global
//! grad-norm, a non-finite loss or norm skips the step (counted, logged), otherwise
//! clipping and AdamW at the scheduled learning rate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};

use crate::backend::{ScoreMode, TokenScores, TokenSequence, TrainablePolicy};
use crate::checkpoint::{self, CheckpointState, FORMAT_VERSION, OPTIMIZER_FILE, TrainerState};
use crate::config::LearnerConfig;
use crate::error::{LearnerError, Result};
use crate::groups::{ScoredGroup, SftExample, select_grpo_groups, select_self_sft};
use crate::loss::{
    BatchScale, GrpoInputs, GrpoParams, composite, group_advantages, grpo_term,
    masked_cross_entropy, masked_sum, reward_std,
};
use crate::metrics::StepMetrics;
use crate::optim::{
    AdamW, AdamWParams, GradAccumulator, clip_grads, global_grad_norm, learning_rate,
};
use crate::teacher::TeacherSampler;

/// What the driver (service or local loop) knows about a batch that the learner does
/// not: which epoch it belongs to and the drop counters kept at submission time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchContext {
    /// Pass over the prompt set.
    pub epoch: u64,
    /// Groups dropped for staleness so far.
    pub dropped_stale_total: u64,
    /// Duplicate submissions ignored so far.
    pub duplicate_groups_total: u64,
    /// Items retired unsampled so far (`skipped` groups).
    pub skipped_items_total: u64,
}

/// The number of optimizer steps a run will take: the length of the learning-rate
/// schedule. `max_steps` wins when set; otherwise every epoch's prompts in batches of
/// `prompts_per_step`, `num_iterations` steps each.
pub fn schedule_length(config: &LearnerConfig, num_prompts: usize) -> usize {
    let batches = (num_prompts * config.training.epochs).div_ceil(config.training.prompts_per_step);
    let steps = batches.max(1) * config.grpo.num_iterations;
    config
        .training
        .max_steps
        .map_or(steps, |max| max.min(steps))
}

/// A completion entering the GRPO term.
struct GrpoRow {
    sequence: TokenSequence,
    advantage: f32,
    behaviour: Option<Vec<f32>>,
}

/// The learner: policy, optimizer, teacher order and counters.
pub struct Learner<P: TrainablePolicy> {
    policy: P,
    config: LearnerConfig,
    names: Vec<String>,
    vars: Vec<Var>,
    optimizer: AdamW,
    teacher: TeacherSampler,
    state: TrainerState,
    schedule_steps: usize,
}

impl<P: TrainablePolicy> std::fmt::Debug for Learner<P> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Learner")
            .field("state", &self.state)
            .field("variables", &self.names.len())
            .field("teacher_examples", &self.teacher.len())
            .field("schedule_steps", &self.schedule_steps)
            .finish()
    }
}

impl<P: TrainablePolicy> Learner<P> {
    /// A learner at step 0. `teacher_examples` are the tokenised teacher traces;
    /// `schedule_steps` is the learning-rate schedule's length (see [`schedule_length`]).
    pub fn new(
        policy: P,
        config: LearnerConfig,
        teacher_examples: Vec<SftExample>,
        schedule_steps: usize,
    ) -> Result<Self> {
        config.validate()?;
        let named = policy.trainable_vars();
        if named.is_empty() {
            return Err(LearnerError::Policy(
                "the policy has no trainable variables".into(),
            ));
        }
        let optimizer = AdamW::new(named.clone(), AdamWParams::from_training(&config.training))?;
        let (names, vars) = named.into_iter().unzip();
        let teacher = TeacherSampler::new(teacher_examples, config.training.seed);
        Ok(Self {
            policy,
            config,
            names,
            vars,
            optimizer,
            teacher,
            state: TrainerState::default(),
            schedule_steps: schedule_steps.max(1),
        })
    }

    /// The policy (e.g. to sample from it in local mode between steps).
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Mutable access to the policy.
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The config in use.
    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// Counters and cursors.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The version of the current adapter weights (0 before the first update).
    pub fn adapter_version(&self) -> u64 {
        self.state.adapter_version
    }

    /// Moves the adapter version past `published`, a version an earlier incarnation of
    /// this run announced (a learner that crashed after its last checkpoint), to
    /// `published + max_staleness + 1`: version numbers are never reused for different
    /// weights, subscribers holding the lost versions take the next one (they only move
    /// forward), and groups sampled with the lost versions are all stale. Returns the new
    /// version, or `None` when the current one is already above `published`.
    pub fn continue_versions_after(&mut self, published: u64) -> Option<u64> {
        if self.state.adapter_version > published {
            return None;
        }
        let next = published
            .saturating_add(self.config.grpo.max_staleness)
            .saturating_add(1);
        self.state.adapter_version = next;
        Some(next)
    }

    /// The learning-rate schedule's length.
    pub fn schedule_steps(&self) -> usize {
        self.schedule_steps
    }

    /// Trains on one batch of groups: `num_iterations` optimizer steps, one metrics line
    /// each. The adapter version goes up by one when at least one step was applied.
    pub fn train_batch(
        &mut self,
        groups: &[ScoredGroup],
        context: BatchContext,
    ) -> Result<Vec<StepMetrics>> {
        for group in groups {
            group.validate()?;
        }
        let grpo_config = self.config.grpo.clone();
        let dual = self.config.dual_source.clone();
        let training = self.config.training.clone();
        let version = self.state.adapter_version;

        // Batch statistics.
        let rewards: Vec<f64> = groups.iter().flat_map(ScoredGroup::rewards).collect();
        let reward_mean = if rewards.is_empty() {
            0.0
        } else {
            rewards.iter().sum::<f64>() / rewards.len() as f64
        };
        let mut staleness = BTreeMap::new();
        for group in groups {
            *staleness
                .entry(version.saturating_sub(group.adapter_version))
                .or_insert(0) += 1;
        }

        // The three sources.
        let selection = select_grpo_groups(groups, grpo_config.dynamic_sampling);
        let mut grpo_rows = Vec::new();
        if dual.alpha > 0.0 {
            for group in &selection.groups {
                let advantages = group_advantages(
                    &group.rewards(),
                    grpo_config.scale_rewards,
                    grpo_config.advantage_epsilon,
                );
                for (completion, advantage) in group.completions.iter().zip(advantages) {
                    if completion.tokens.is_empty() {
                        continue;
                    }
                    grpo_rows.push(GrpoRow {
                        sequence: joined(&group.prompt_tokens, &completion.tokens),
                        advantage: advantage as f32,
                        behaviour: (!completion.behaviour_logprobs.is_empty())
                            .then(|| completion.behaviour_logprobs.clone()),
                    });
                }
            }
        }
        let teacher = if dual.beta > 0.0 {
            self.teacher.next_batch(training.teacher_traces_per_step)
        } else {
            Vec::new()
        };
        let self_sft = if dual.gamma > 0.0 {
            select_self_sft(groups, dual.self_sft_top_k, dual.self_sft_reward_threshold)
        } else {
            Vec::new()
        };
        let teacher_sequences = sft_sequences(&teacher);
        let self_sequences = sft_sequences(&self_sft);

        let grpo_scale = BatchScale {
            sequences: grpo_rows.len(),
            tokens: grpo_rows
                .iter()
                .map(|row| row.sequence.tokens.len() - row.sequence.score_from)
                .sum(),
            max_len: grpo_config.max_new_tokens,
        };
        let teacher_tokens = scored_tokens(&teacher_sequences);
        let self_tokens = scored_tokens(&self_sequences);
        let trained_tokens = grpo_scale.tokens + teacher_tokens + self_tokens;

        let micro = training.gradient_accumulation_steps;
        let grpo_chunks = split_even(grpo_rows.len(), micro);
        let teacher_chunks = split_even(teacher_sequences.len(), micro);
        let self_chunks = split_even(self_sequences.len(), micro);

        // Fixed for every iteration of this batch: reference and (μ > 1) old log-probs.
        let needs_reference = grpo_config.kl_coef > 0.0;
        let mut reference: Vec<Option<Tensor>> = vec![None; micro];
        let mut frozen_old: Vec<Option<Tensor>> = vec![None; micro];
        for (chunk, range) in grpo_chunks.iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let sequences: Vec<TokenSequence> = grpo_rows[range.clone()]
                .iter()
                .map(|row| row.sequence.clone())
                .collect();
            if needs_reference {
                let scores = self.policy.score(
                    &sequences,
                    ScoreMode::Reference,
                    grpo_config.temperature,
                    false,
                )?;
                reference[chunk] = Some(scores.logprobs.detach());
            }
            if grpo_config.num_iterations > 1 {
                let scores = self.policy.score(
                    &sequences,
                    ScoreMode::Frozen,
                    grpo_config.temperature,
                    false,
                )?;
                frozen_old[chunk] = Some(scores.logprobs.detach());
            }
        }

        let params = GrpoParams {
            epsilon_low: grpo_config.epsilon,
            epsilon_high: grpo_config.epsilon_high(),
            kl_coef: grpo_config.kl_coef,
            kl_estimator: grpo_config.kl_estimator,
            importance_sampling_cap: grpo_config.importance_sampling_cap,
            aggregation: grpo_config.loss_aggregation,
        };

        let mut all_metrics = Vec::with_capacity(grpo_config.num_iterations);
        let mut any_update = false;
        for iteration in 0..grpo_config.num_iterations {
            let started = Instant::now();
            self.state.step += 1;
            let lr = learning_rate(
                self.state.step as usize,
                self.schedule_steps,
                training.warmup_steps,
                training.learning_rate,
                training.lr_schedule,
                training.min_lr_ratio,
            );
            let mut accumulator = GradAccumulator::new(self.vars.len());
            let mut sums = TermSums::default();
            let mut non_finite_loss = false;
            let mut has_terms = false;
            for chunk in 0..micro {
                let mut grpo_loss = None;
                if !grpo_chunks[chunk].is_empty() {
                    let rows = &grpo_rows[grpo_chunks[chunk].clone()];
                    let sequences: Vec<TokenSequence> =
                        rows.iter().map(|row| row.sequence.clone()).collect();
                    let scores = self.policy.score(
                        &sequences,
                        ScoreMode::Train,
                        grpo_config.temperature,
                        true,
                    )?;
                    let old = match &frozen_old[chunk] {
                        Some(old) => old.clone(),
                        None => scores.logprobs.detach(),
                    };
                    let behaviour = behaviour_tensor(rows, &old, &scores)?;
                    let advantages = Tensor::from_vec(
                        rows.iter().map(|row| row.advantage).collect::<Vec<f32>>(),
                        rows.len(),
                        &scores.logprobs.device().clone(),
                    )?;
                    let term = grpo_term(
                        &GrpoInputs {
                            logp: &scores.logprobs,
                            old_logp: &old,
                            ref_logp: reference[chunk].as_ref(),
                            behaviour_logp: Some(&behaviour),
                            advantages: &advantages,
                            mask: &scores.mask,
                        },
                        &params,
                        grpo_scale,
                    )?;
                    sums.kl += term.kl_sum;
                    sums.clipped += term.clipped_tokens;
                    sums.importance_weight += term.importance_weight_sum;
                    sums.grpo_tokens += term.tokens;
                    if let Some(entropy) = &scores.entropy {
                        sums.entropy += masked_sum(entropy, &scores.mask)?;
                    }
                    grpo_loss = Some(term.loss);
                }
                let teacher_loss = self.sft_loss(
                    &teacher_sequences[teacher_chunks[chunk].clone()],
                    teacher_tokens,
                )?;
                let self_loss =
                    self.sft_loss(&self_sequences[self_chunks[chunk].clone()], self_tokens)?;
                let Some(total) = composite(&[
                    (dual.alpha, grpo_loss.as_ref()),
                    (dual.beta, teacher_loss.as_ref()),
                    (dual.gamma, self_loss.as_ref()),
                ])?
                else {
                    continue;
                };
                has_terms = true;
                add_term(&mut sums.grpo, grpo_loss.as_ref())?;
                add_term(&mut sums.teacher, teacher_loss.as_ref())?;
                add_term(&mut sums.self_sft, self_loss.as_ref())?;
                let value = scalar(&total)?;
                sums.total += value;
                if !value.is_finite() {
                    non_finite_loss = true;
                    break;
                }
                let grads = total.backward()?;
                accumulator.add(&self.vars, &grads)?;
            }
            let mut grads = accumulator.into_grads();
            let grad_norm = global_grad_norm(&grads)?;
            let skipped = has_terms && (non_finite_loss || !grad_norm.is_finite());
            if skipped {
                self.state.skipped_steps += 1;
                tracing::warn!(
                    step = self.state.step,
                    loss = sums.total,
                    grad_norm,
                    skipped_total = self.state.skipped_steps,
                    "non-finite loss or gradient: step skipped"
                );
            } else if has_terms {
                clip_grads(&mut grads, grad_norm, training.max_grad_norm)?;
                self.optimizer.step(&grads, lr)?;
                self.state.optimizer_updates += 1;
                any_update = true;
            } else {
                tracing::debug!(
                    step = self.state.step,
                    "batch has no loss term: nothing to update"
                );
            }
            let step_seconds = started.elapsed().as_secs_f64();
            let grpo_tokens = sums.grpo_tokens.max(1.0);
            all_metrics.push(StepMetrics {
                step: self.state.step,
                adapter_version: version,
                epoch: context.epoch,
                iteration,
                loss: sums.total,
                loss_grpo: sums.grpo,
                loss_teacher_sft: sums.teacher,
                loss_self_sft: sums.self_sft,
                reward_mean,
                reward_std: reward_std(&rewards),
                groups: groups.len(),
                completions: rewards.len(),
                zero_std_share: if groups.is_empty() {
                    0.0
                } else {
                    selection.zero_std_groups as f64 / groups.len() as f64
                },
                dropped_zero_std: selection.dropped_zero_std,
                kl: (needs_reference && sums.grpo_tokens > 0.0).then(|| sums.kl / grpo_tokens),
                clip_fraction: sums.clipped / grpo_tokens,
                importance_weight_mean: if sums.grpo_tokens > 0.0 {
                    sums.importance_weight / grpo_tokens
                } else {
                    1.0
                },
                entropy: (sums.grpo_tokens > 0.0).then(|| sums.entropy / grpo_tokens),
                grad_norm,
                lr,
                teacher_examples: teacher_sequences.len(),
                self_sft_examples: self_sequences.len(),
                tokens: trained_tokens,
                tokens_per_s: trained_tokens as f64 / step_seconds.max(1e-9),
                step_seconds,
                staleness: staleness.clone(),
                dropped_stale_total: context.dropped_stale_total,
                duplicate_groups_total: context.duplicate_groups_total,
                skipped_items_total: context.skipped_items_total,
                skipped,
                skipped_total: self.state.skipped_steps,
            });
        }
        if any_update {
            self.state.adapter_version += 1;
        }
        self.state.batches += 1;
        self.state.teacher_cursor = self.teacher.cursor();
        for metrics in &mut all_metrics {
            metrics.adapter_version = self.state.adapter_version;
            crate::prometheus::record_step(metrics);
        }
        Ok(all_metrics)
    }

    /// Mean cross-entropy of a chunk of SFT sequences, divided by the whole batch's
    /// target-token count; `None` for an empty chunk.
    fn sft_loss(
        &mut self,
        sequences: &[TokenSequence],
        total_tokens: usize,
    ) -> Result<Option<Tensor>> {
        if sequences.is_empty() {
            return Ok(None);
        }
        // SFT targets are not samples of the rollout distribution: the model's own (T = 1).
        let scores = self.policy.score(sequences, ScoreMode::Train, 1.0, false)?;
        Ok(Some(masked_cross_entropy(
            &scores.logprobs,
            &scores.mask,
            total_tokens,
        )?))
    }

    /// The current adapter as safetensors bytes (what gets broadcast).
    pub fn adapter_bytes(&self) -> Result<Vec<u8>> {
        self.policy.adapter_bytes()
    }

    /// Writes `output_dir/checkpoint-STEP` atomically and prunes old ones; `driver` is the
    /// caller's own state (data cursor), returned again by [`Learner::restore`].
    pub fn save_checkpoint(&self, output_dir: &Path, driver: serde_json::Value) -> Result<PathBuf> {
        let state = CheckpointState {
            format_version: FORMAT_VERSION,
            trainer: self.state.clone(),
            policy_rng: self.policy.rng_state(),
            config: self.config.clone(),
            driver,
        };
        checkpoint::write_checkpoint(
            output_dir,
            self.state.step,
            self.config.training.keep_last_checkpoints,
            |dir| {
                self.policy.save_adapter(dir)?;
                let optimizer_path = dir.join(OPTIMIZER_FILE);
                candle_core::safetensors::save(&self.optimizer.state_tensors(), &optimizer_path)?;
                state.write(dir)
            },
        )
    }

    /// Continues from a checkpoint directory: adapter weights, optimizer moments, dropout
    /// RNG, teacher cursor and counters. Returns the driver state saved with it.
    pub fn restore(&mut self, dir: &Path) -> Result<serde_json::Value> {
        let state = CheckpointState::read(dir)?;
        if state.config.grpo != self.config.grpo
            || state.config.dual_source != self.config.dual_source
        {
            tracing::warn!(
                checkpoint = %dir.display(),
                "the checkpoint was written with a different [grpo] or [dual_source] config; resuming with the current one"
            );
        }
        self.policy.load_adapter(dir)?;
        let optimizer_path = dir.join(OPTIMIZER_FILE);
        let moments = candle_core::safetensors::load(&optimizer_path, &self.policy.device())
            .map_err(|err| LearnerError::checkpoint(dir, format!("{OPTIMIZER_FILE}: {err}")))?;
        self.optimizer
            .load_state(&moments, state.trainer.optimizer_updates)
            .map_err(|err| LearnerError::checkpoint(dir, err.to_string()))?;
        self.policy.set_rng_state(&state.policy_rng)?;
        self.teacher.set_cursor(state.trainer.teacher_cursor);
        self.state = state.trainer;
        Ok(state.driver)
    }

    /// Writes the current adapter as a PEFT directory (the run's `final_model/`).
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|err| LearnerError::io(dir, err))?;
        self.policy.save_adapter(dir)
    }

    /// The optimizer (for inspection in tests and benchmarks).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }
}

/// Running sums over the micro-batches of one step.
#[derive(Debug, Default)]
struct TermSums {
    total: f64,
    grpo: Option<f64>,
    teacher: Option<f64>,
    self_sft: Option<f64>,
    kl: f64,
    clipped: f64,
    importance_weight: f64,
    grpo_tokens: f64,
    entropy: f64,
}

/// Adds a micro-batch's term to its running sum (absent terms leave the sum absent).
fn add_term(slot: &mut Option<f64>, term: Option<&Tensor>) -> Result<()> {
    if let Some(term) = term {
        *slot = Some(slot.unwrap_or(0.0) + scalar(term)?);
    }
    Ok(())
}

fn scalar(tensor: &Tensor) -> Result<f64> {
    Ok(tensor.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn joined(prompt: &[u32], completion: &[u32]) -> TokenSequence {
    let mut tokens = Vec::with_capacity(prompt.len() + completion.len());
    tokens.extend_from_slice(prompt);
    tokens.extend_from_slice(completion);
    TokenSequence {
        tokens,
        score_from: prompt.len(),
    }
}

/// Tokens scored (trained on) in `sequences`.
fn scored_tokens(sequences: &[TokenSequence]) -> usize {
    sequences
        .iter()
        .map(|sequence| sequence.tokens.len() - sequence.score_from)
        .sum()
}

fn sft_sequences(examples: &[SftExample]) -> Vec<TokenSequence> {
    examples
        .iter()
        .filter(|example| !example.prompt_tokens.is_empty() && !example.target_tokens.is_empty())
        .map(|example| joined(&example.prompt_tokens, &example.target_tokens))
        .collect()
}

/// `count` items split into `parts` contiguous ranges whose sizes differ by at most one.
fn split_even(count: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    (0..parts)
        .map(|part| (part * count / parts)..((part + 1) * count / parts))
        .collect()
}

/// The behaviour log-probs of a chunk as a `[rows, columns]` tensor aligned with
/// `scores`; rows without them take the old log-probs (IS weight 1).
fn behaviour_tensor(rows: &[GrpoRow], old: &Tensor, scores: &TokenScores) -> Result<Tensor> {
    let (row_count, columns) = scores.logprobs.dims2()?;
    let old_values = old.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut values = vec![0f32; row_count * columns];
    for (index, row) in rows.iter().enumerate() {
        let target = &mut values[index * columns..(index + 1) * columns];
        match &row.behaviour {
            Some(behaviour) => {
                let length = behaviour.len().min(columns);
                target[..length].copy_from_slice(&behaviour[..length]);
            }
            None => target.copy_from_slice(&old_values[index]),
        }
    }
    Ok(Tensor::from_vec(
        values,
        (row_count, columns),
        scores.logprobs.device(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LossAggregation, LrSchedule};
    use crate::groups::Completion;
    use crate::testing::ToyPolicy;

    const VOCAB: usize = 16;

    fn config() -> LearnerConfig {
        let mut config = LearnerConfig::default();
        config.grpo.num_generations = 4;
        config.grpo.max_new_tokens = 4;
        config.training.learning_rate = 0.05;
        config.training.warmup_steps = 0;
        config.training.lr_schedule = LrSchedule::Constant;
        config.training.gradient_accumulation_steps = 1;
        config.training.prompts_per_step = 2;
        config.training.teacher_traces_per_step = 2;
        config.training.keep_last_checkpoints = 2;
        config
    }

    /// Two prompts; per prompt four completions of which the first is always rewarded.
    fn rewarded_groups(batch: u64, version: u64) -> Vec<ScoredGroup> {
        (0..2u32)
            .map(|prompt| ScoredGroup {
                key: format!("b{batch}-p{prompt}"),
                prompt_id: format!("task-{prompt}"),
                prompt_tokens: vec![1, 2 + prompt],
                completions: (0..4u32)
                    .map(|index| Completion {
                        tokens: vec![4 + 2 * index, 5 + 2 * index + (batch as u32 % 2)],
                        behaviour_logprobs: vec![-2.0 - 0.1 * index as f32, -2.5],
                        reward: if index == 0 { 1.0 } else { 0.0 },
                    })
                    .collect(),
                adapter_version: version,
            })
            .collect()
    }

    fn teacher_examples() -> Vec<SftExample> {
        (0..3u32)
            .map(|index| SftExample {
                prompt_tokens: vec![1, 13],
                target_tokens: vec![14, 15 - index],
            })
            .collect()
    }

    fn learner(config: LearnerConfig, dropout: f64) -> Learner<ToyPolicy> {
        Learner::new(
            ToyPolicy::new(VOCAB, 4, dropout, 3),
            config,
            teacher_examples(),
            100,
        )
        .unwrap()
    }

    #[test]
    fn grpo_raises_the_rewarded_completion() {
        let mut config = config();
        config.dual_source.beta = 0.0;
        config.dual_source.gamma = 0.0;
        let mut learner = learner(config, 0.0);
        let rewarded = [1, 2, 4, 5];
        let unrewarded = [1, 2, 6, 7];
        let before = learner.policy_mut().sequence_logprob(&rewarded, 2);
        let before_other = learner.policy_mut().sequence_logprob(&unrewarded, 2);
        for batch in 0..10 {
            let version = learner.adapter_version();
            learner
                .train_batch(
                    &rewarded_groups(batch * 2, version),
                    BatchContext::default(),
                )
                .unwrap();
        }
        let after = learner.policy_mut().sequence_logprob(&rewarded, 2);
        let after_other = learner.policy_mut().sequence_logprob(&unrewarded, 2);
        assert!(after > before + 0.5, "rewarded log-prob {before} → {after}");
        assert!(
            after_other < before_other,
            "unrewarded log-prob {before_other} → {after_other}"
        );
        assert_eq!(learner.adapter_version(), 10);
    }

    #[test]
    fn gradient_accumulation_matches_the_full_batch() {
        for aggregation in [
            LossAggregation::Grpo,
            LossAggregation::Dapo,
            LossAggregation::DrGrpo,
        ] {
            let mut whole_config = config();
            whole_config.grpo.loss_aggregation = aggregation;
            let mut split_config = whole_config.clone();
            split_config.training.gradient_accumulation_steps = 3;
            let mut whole = learner(whole_config, 0.0);
            let mut split = learner(split_config, 0.0);
            for batch in 0..3 {
                let groups = rewarded_groups(batch, batch);
                let a = whole.train_batch(&groups, BatchContext::default()).unwrap();
                let b = split.train_batch(&groups, BatchContext::default()).unwrap();
                assert!(
                    (a[0].loss - b[0].loss).abs() < 1e-5,
                    "{aggregation:?}: {} vs {}",
                    a[0].loss,
                    b[0].loss
                );
                assert!((a[0].grad_norm - b[0].grad_norm).abs() < 1e-5);
            }
            let whole_values = whole.policy().adapter_values();
            let split_values = split.policy().adapter_values();
            let max_diff = whole_values
                .iter()
                .zip(&split_values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                max_diff < 1e-5,
                "{aggregation:?}: adapters differ by {max_diff}"
            );
        }
    }

    /// The per-step numbers an exactly resumed run must reproduce.
    fn losses(metrics: &[StepMetrics]) -> Vec<[f64; 6]> {
        metrics
            .iter()
            .map(|m| {
                [
                    m.loss,
                    m.loss_grpo.unwrap_or(f64::NAN),
                    m.loss_teacher_sft.unwrap_or(f64::NAN),
                    m.loss_self_sft.unwrap_or(f64::NAN),
                    m.grad_norm,
                    m.lr,
                ]
            })
            .collect()
    }

    fn resume_config() -> LearnerConfig {
        let mut config = config();
        config.grpo.num_iterations = 2;
        config.training.gradient_accumulation_steps = 2;
        config.training.warmup_steps = 3;
        config.training.lr_schedule = LrSchedule::Cosine;
        config.dual_source.self_sft_reward_threshold = 0.5;
        config
    }

    fn run_batches(
        learner: &mut Learner<ToyPolicy>,
        batches: std::ops::Range<u64>,
    ) -> Vec<StepMetrics> {
        let mut metrics = Vec::new();
        for batch in batches {
            let version = learner.adapter_version();
            metrics.extend(
                learner
                    .train_batch(
                        &rewarded_groups(batch, version.saturating_sub(batch % 2)),
                        BatchContext::default(),
                    )
                    .unwrap(),
            );
        }
        metrics
    }

    #[test]
    fn resume_from_a_checkpoint_is_exact() {
        let mut straight = learner(resume_config(), 0.2);
        let expected = run_batches(&mut straight, 0..6);

        let dir = tempfile::tempdir().unwrap();
        let mut first = learner(resume_config(), 0.2);
        let mut observed = run_batches(&mut first, 0..3);
        let checkpoint = first
            .save_checkpoint(dir.path(), serde_json::json!({"cursor": 3}))
            .unwrap();
        assert!(checkpoint.ends_with("checkpoint-6"));
        drop(first);

        // A fresh process: new policy object (same base, re-initialised adapter), restored.
        let mut resumed = learner(resume_config(), 0.2);
        let driver = resumed.restore(&checkpoint).unwrap();
        assert_eq!(driver, serde_json::json!({"cursor": 3}));
        observed.extend(run_batches(&mut resumed, 3..6));

        assert_eq!(losses(&observed), losses(&expected));
        assert_eq!(
            resumed.policy().adapter_values(),
            straight.policy().adapter_values()
        );
        assert_eq!(resumed.state(), straight.state());

        // The test can tell: without the dropout RNG state the resumed run diverges.
        let mut careless = learner(resume_config(), 0.2);
        careless.restore(&checkpoint).unwrap();
        careless
            .policy_mut()
            .set_rng_state(&serde_json::json!({"seed": 3, "counter": 0}))
            .unwrap();
        let diverged = run_batches(&mut careless, 3..6);
        assert_ne!(losses(&diverged), losses(&expected[6..]));
    }

    #[test]
    fn non_finite_loss_skips_the_step_and_training_goes_on() {
        let mut config = config();
        config.grpo.scale_rewards = false;
        let mut learner = learner(config, 0.0);
        let before = learner.policy().adapter_values();
        // 1e39 is a finite f64 but overflows the f32 advantages: an infinite loss.
        let mut groups = rewarded_groups(0, 0);
        groups[0].completions[0].reward = 1e39;
        let metrics = learner
            .train_batch(&groups, BatchContext::default())
            .unwrap();
        assert!(metrics[0].skipped);
        assert_eq!(metrics[0].skipped_total, 1);
        assert_eq!(learner.policy().adapter_values(), before);
        assert_eq!(learner.adapter_version(), 0);
        let metrics = learner
            .train_batch(&rewarded_groups(1, 0), BatchContext::default())
            .unwrap();
        assert!(!metrics[0].skipped);
        assert_eq!(metrics[0].skipped_total, 1);
        assert_ne!(learner.policy().adapter_values(), before);
        assert_eq!(learner.adapter_version(), 1);
    }

    #[test]
    fn metrics_report_the_batch() {
        let mut config = config();
        config.grpo.dynamic_sampling = true;
        let mut learner = learner(config, 0.0);
        let mut groups = rewarded_groups(0, 0);
        for completion in &mut groups[1].completions {
            completion.reward = 1.0;
        }
        groups[1].adapter_version = 0;
        let metrics = learner
            .train_batch(
                &groups,
                BatchContext {
                    epoch: 2,
                    dropped_stale_total: 5,
                    duplicate_groups_total: 1,
                    skipped_items_total: 3,
                },
            )
            .unwrap();
        let line = &metrics[0];
        assert_eq!((line.groups, line.completions), (2, 8));
        assert_eq!(line.zero_std_share, 0.5);
        assert_eq!(line.dropped_zero_std, 1);
        // Rewards 1,0,0,0 and 1,1,1,1: mean 5/8.
        assert!((line.reward_mean - 0.625).abs() < 1e-12);
        assert_eq!(line.staleness, BTreeMap::from([(0, 2)]));
        assert_eq!(
            (
                line.epoch,
                line.dropped_stale_total,
                line.duplicate_groups_total,
                line.skipped_items_total
            ),
            (2, 5, 1, 3)
        );
        assert_eq!(line.teacher_examples, 2);
        // Self-SFT: threshold 1 → group 0's first and group 1's first (top 1 each).
        assert_eq!(line.self_sft_examples, 2);
        // One iteration, ratio 1: nothing clipped; KL is zero at the start (B = 0).
        assert_eq!(line.clip_fraction, 0.0);
        assert!(line.kl.unwrap().abs() < 1e-9);
        assert!(line.entropy.unwrap() > 0.0);
        assert!(
            line.loss_grpo.is_some()
                && line.loss_teacher_sft.is_some()
                && line.loss_self_sft.is_some()
        );
        // GRPO tokens (4 × 2) + teacher (2 × 2) + self (2 × 2).
        assert_eq!(line.tokens, 16);
        assert!(line.tokens_per_s > 0.0 && line.grad_norm > 0.0);
        assert_eq!(line.adapter_version, 1);
    }
}
