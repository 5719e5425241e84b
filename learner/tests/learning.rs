//! The learner on the real decoder (the policy crate's tiny random Qwen2, CPU, f32):
//!
//! - GRPO fed groups in which one fixed completion per prompt is always rewarded raises
//!   that completion's probability and lowers the others';
//! - teacher-SFT alone lowers the cross-entropy of held-out teacher traces;
//! - teacher traces become (prompt, target) tokens with and without the `<think>` block;
//! - a run stopped after step k and resumed from its checkpoint logs exactly the per-step
//!   losses of an uninterrupted run (LoRA dropout on, two updates per batch, gradient
//!   accumulation, all three loss terms);
//! - GRPO log-probs are scored at the rollout temperature, so the importance weights of a
//!   policy's own samples at T = 0.7 are exactly 1.

use std::sync::Arc;

use candle_core::{DType, Device};
use tgrpo_dataset::Problem;
use tgrpo_learner::metrics::{MetricsWriter, read_metrics};
use tgrpo_learner::teacher::teacher_examples;
use tgrpo_learner::{
    BatchContext, Completion, Learner, LearnerConfig, LoraPolicy, LrSchedule, ScoreMode,
    ScoredGroup, SftExample, StepMetrics, TokenSequence, TrainablePolicy,
};
use tgrpo_policy::{
    Family, GenerationRequest, LoadOptions, LoraConfig, ModelSource, Policy, SamplingParams, tiny,
};
use tgrpo_teacher::TraceRecord;

fn tiny_policy(dropout: f64) -> LoraPolicy {
    let model = tiny::model(Family::Qwen2, 7, &Device::Cpu, DType::F32).unwrap();
    let lora = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout,
        ..Default::default()
    };
    LoraPolicy::new(Arc::new(model), &lora, 11, "tiny-qwen2").unwrap()
}

fn base_config() -> LearnerConfig {
    let mut config = LearnerConfig::default();
    config.grpo.num_generations = 4;
    config.grpo.max_new_tokens = 8;
    config.training.learning_rate = 2e-3;
    config.training.warmup_steps = 0;
    config.training.lr_schedule = LrSchedule::Constant;
    config.training.gradient_accumulation_steps = 1;
    config.training.prompts_per_step = 2;
    config.training.teacher_traces_per_step = 4;
    config
}

/// Mean log-prob per sequence of `targets` given `prompts`, adapter on, no dropout.
fn mean_logprob(policy: &mut LoraPolicy, examples: &[(Vec<u32>, Vec<u32>)]) -> f64 {
    let sequences: Vec<TokenSequence> = examples
        .iter()
        .map(|(prompt, target)| TokenSequence {
            tokens: [prompt.as_slice(), target.as_slice()].concat(),
            score_from: prompt.len(),
        })
        .collect();
    let scores = policy
        .score(&sequences, ScoreMode::Frozen, 1.0, false)
        .unwrap();
    let total = scores
        .logprobs
        .to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    total / examples.len() as f64
}

const PROMPTS: [[u32; 4]; 2] = [[40, 41, 42, 43], [50, 51, 52, 53]];

fn completion_tokens(index: u32) -> Vec<u32> {
    vec![100 + index, 110 + index, 120 + index]
}

/// Per prompt, four fixed completions; the first is the only one rewarded.
fn rewarded_groups(batch: u64, version: u64) -> Vec<ScoredGroup> {
    PROMPTS
        .iter()
        .enumerate()
        .map(|(prompt_index, prompt)| ScoredGroup {
            key: format!("{batch}:{prompt_index}"),
            prompt_id: format!("p{prompt_index}"),
            prompt_tokens: prompt.to_vec(),
            completions: (0..4)
                .map(|index| Completion {
                    tokens: completion_tokens(index),
                    behaviour_logprobs: Vec::new(),
                    reward: if index == 0 { 1.0 } else { 0.0 },
                })
                .collect(),
            adapter_version: version,
        })
        .collect()
}

#[test]
fn grpo_raises_the_always_rewarded_completion() {
    let mut config = base_config();
    config.dual_source.beta = 0.0;
    config.dual_source.gamma = 0.0;
    config.training.learning_rate = 5e-3;
    let mut learner = Learner::new(tiny_policy(0.0), config, Vec::new(), 100).unwrap();
    let pairs = |index: u32| -> Vec<(Vec<u32>, Vec<u32>)> {
        PROMPTS
            .iter()
            .map(|prompt| (prompt.to_vec(), completion_tokens(index)))
            .collect()
    };
    let rewarded_before = mean_logprob(learner.policy_mut(), &pairs(0));
    let others_before: f64 = (1..4)
        .map(|i| mean_logprob(learner.policy_mut(), &pairs(i)))
        .sum();
    for batch in 0..12 {
        let version = learner.adapter_version();
        let lines = learner
            .train_batch(&rewarded_groups(batch, version), BatchContext::default())
            .unwrap();
        assert!(!lines[0].skipped);
    }
    let rewarded_after = mean_logprob(learner.policy_mut(), &pairs(0));
    let others_after: f64 = (1..4)
        .map(|i| mean_logprob(learner.policy_mut(), &pairs(i)))
        .sum();
    assert!(
        rewarded_after > rewarded_before + 1.0,
        "log p(rewarded) {rewarded_before:.3} → {rewarded_after:.3}"
    );
    assert!(
        others_after < others_before,
        "Σ log p(others) {others_before:.3} → {others_after:.3}"
    );
}

/// One GRPO batch of completions the tiny model itself sampled at `sample_at`, trained
/// with `grpo.temperature = train_at`; returns the step's mean importance weight
/// `min(exp(logp_old − logp_behaviour), cap)`. Before any update the learner's policy is
/// the sampler's, so the weight is 1 exactly when both see the same distribution.
fn importance_weight_of_own_samples(sample_at: f64, train_at: f64) -> f64 {
    let mut config = base_config();
    config.grpo.temperature = train_at;
    config.grpo.importance_sampling_cap = Some(100.0);
    config.dual_source.beta = 0.0;
    config.dual_source.gamma = 0.0;
    let policy = tiny_policy(0.0);
    let sampler = policy.snapshot().unwrap();
    let model = policy.model().clone();
    let mut learner = Learner::new(policy, config, Vec::new(), 10).unwrap();
    let groups: Vec<ScoredGroup> = PROMPTS
        .iter()
        .enumerate()
        .map(|(prompt_index, prompt)| {
            let requests: Vec<GenerationRequest> = (0..4)
                .map(|sample| GenerationRequest {
                    prompt: prompt.to_vec(),
                    params: SamplingParams {
                        temperature: sample_at,
                        max_new_tokens: 8,
                        seed: (prompt_index * 4 + sample) as u64,
                        ignore_eos: true,
                        ..Default::default()
                    },
                })
                .collect();
            let generations = model
                .generate(&requests, Some(&sampler), None, &[])
                .unwrap();
            ScoredGroup {
                key: format!("t:{prompt_index}"),
                prompt_id: format!("p{prompt_index}"),
                prompt_tokens: prompt.to_vec(),
                completions: generations
                    .into_iter()
                    .enumerate()
                    .map(|(index, generation)| Completion {
                        tokens: generation.tokens,
                        behaviour_logprobs: generation.logprobs,
                        reward: index as f64,
                    })
                    .collect(),
                adapter_version: 0,
            }
        })
        .collect();
    let metrics = learner
        .train_batch(&groups, BatchContext::default())
        .unwrap();
    metrics[0].importance_weight_mean
}

/// The learner scores GRPO completions at `grpo.temperature` (the rollout temperature), so
/// completions sampled at T = 0.7 get importance weight 1 before any update; scoring them
/// at T = 1 (the old bias) would not.
#[test]
fn grpo_scores_at_the_rollout_temperature() {
    let matched = importance_weight_of_own_samples(0.7, 0.7);
    let mismatched = importance_weight_of_own_samples(0.7, 1.0);
    println!("importance weight: matched {matched}, scored at T=1 {mismatched}");
    assert!((matched - 1.0).abs() < 1e-4, "{matched}");
    assert!((mismatched - 1.0).abs() > 1e-2, "{mismatched}");
}

fn problem(index: usize) -> Problem {
    Problem {
        task_id: format!("{}", 100 + index),
        text: format!("Write a function that returns {index} plus its argument."),
        reference: None,
        tests: vec![format!("assert add_{index}(1) == {}", index + 1)],
        setup_code: String::new(),
        format: Default::default(),
        entry_point: Some(format!("add_{index}")),
        prompt: None,
    }
}

fn trace(index: usize, thinking: &str) -> TraceRecord {
    let answer = format!("```python\ndef add_{index}(x):\n    return x + {index}\n```");
    serde_json::from_value(serde_json::json!({
        "problem_id": format!("{}", 100 + index),
        "sample_index": 0,
        "messages": [],
        "thinking": thinking,
        "answer": answer,
        "code": format!("def add_{index}(x):\n    return x + {index}"),
        "raw_text": "",
        "finish_reason": "stop",
        "teacher_model": "test-teacher",
        "request_hash": format!("h{index}"),
        "passed": true,
        "reward": 1.0,
    }))
    .unwrap()
}

fn tiny_chat_policy(dir: &std::path::Path) -> Policy {
    tiny::write_hf_dir(dir, Family::Qwen2, 7).unwrap();
    Policy::load(
        &ModelSource::Dir(dir.to_path_buf()),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn teacher_traces_become_prompt_and_target_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let policy = tiny_chat_policy(dir.path());
    let problems: Vec<Problem> = (0..2).map(problem).collect();
    let traces = vec![
        trace(0, "Add the number."),
        trace(1, "Add it."),
        trace(9, "unknown"),
    ];
    let with = teacher_examples(&traces, &problems, &policy, true).unwrap();
    let without = teacher_examples(&traces, &problems, &policy, false).unwrap();
    assert_eq!((with.examples.len(), with.unknown_problem), (2, 1));
    let tokenizer = policy.tokenizer();
    let decode = |tokens: &[u32]| tokenizer.decode(tokens, false).unwrap();
    let expected_prompt = policy
        .chat_prompt(&[tgrpo_policy::chat::Message::user(
            tgrpo_dataset::prompt::user_message(&problems[0]),
        )])
        .unwrap();
    assert_eq!(with.examples[0].prompt_tokens, expected_prompt);
    assert_eq!(without.examples[0].prompt_tokens, expected_prompt);
    assert_eq!(
        decode(&with.examples[0].target_tokens),
        "<think>\nAdd the number.\n</think>\n\n```python\ndef add_0(x):\n    return x + 0\n```<|im_end|>"
    );
    assert_eq!(
        decode(&without.examples[0].target_tokens),
        "```python\ndef add_0(x):\n    return x + 0\n```<|im_end|>"
    );
    // The target ends with the end-of-turn token the sampler stops at.
    let im_end = tiny::special_token_id("<|im_end|>").unwrap();
    assert_eq!(*with.examples[1].target_tokens.last().unwrap(), im_end);
}

#[test]
fn teacher_sft_lowers_cross_entropy_on_held_out_traces() {
    let dir = tempfile::tempdir().unwrap();
    let chat = tiny_chat_policy(dir.path());
    let problems: Vec<Problem> = (0..12).map(problem).collect();
    let traces: Vec<TraceRecord> = (0..12)
        .map(|i| trace(i, "Add the constant to x."))
        .collect();
    let examples = teacher_examples(&traces, &problems, &chat, true)
        .unwrap()
        .examples;
    let (train, held_out) = examples.split_at(9);
    let held_out: Vec<(Vec<u32>, Vec<u32>)> = held_out
        .iter()
        .map(|example: &SftExample| (example.prompt_tokens.clone(), example.target_tokens.clone()))
        .collect();
    let target_tokens: usize = held_out.iter().map(|(_, target)| target.len()).sum();

    let mut config = base_config();
    config.dual_source.alpha = 0.0;
    config.dual_source.gamma = 0.0;
    config.dual_source.beta = 1.0;
    config.training.learning_rate = 5e-3;
    let mut learner = Learner::new(tiny_policy(0.0), config, train.to_vec(), 100).unwrap();
    let per_token_ce = |learner: &mut Learner<LoraPolicy>| {
        -mean_logprob(learner.policy_mut(), &held_out) * held_out.len() as f64
            / target_tokens as f64
    };
    let before = per_token_ce(&mut learner);
    let mut first_loss = None;
    for _ in 0..10 {
        let lines = learner.train_batch(&[], BatchContext::default()).unwrap();
        assert_eq!(lines[0].teacher_examples, 4);
        assert!(lines[0].loss_grpo.is_none() && lines[0].loss_self_sft.is_none());
        first_loss.get_or_insert(lines[0].loss_teacher_sft.unwrap());
    }
    let after = per_token_ce(&mut learner);
    assert!(
        after < before - 0.3,
        "held-out cross-entropy per token {before:.3} → {after:.3}"
    );
    // The training loss at step 1 is the same quantity on the training traces.
    assert!((first_loss.unwrap() - before).abs() < 1.0);
}

fn resume_config(output_dir: &std::path::Path) -> LearnerConfig {
    let mut config = base_config();
    config.grpo.num_iterations = 2;
    config.training.gradient_accumulation_steps = 2;
    config.training.warmup_steps = 2;
    config.training.lr_schedule = LrSchedule::Cosine;
    config.training.teacher_traces_per_step = 2;
    config.dual_source.self_sft_reward_threshold = 0.5;
    config.training.output_dir = output_dir.to_path_buf();
    config
}

fn sft_examples() -> Vec<SftExample> {
    (0..5u32)
        .map(|index| SftExample {
            prompt_tokens: vec![60, 61 + index],
            target_tokens: vec![70 + index, 80, 90 + index],
        })
        .collect()
}

/// Trains batches `range` and appends their metrics lines to the run's metrics file.
fn train_range(
    learner: &mut Learner<LoraPolicy>,
    writer: &mut MetricsWriter,
    range: std::ops::Range<u64>,
) {
    for batch in range {
        let mut groups = rewarded_groups(batch, learner.adapter_version());
        // Behaviour log-probs that drift from the learner's, so the IS weights matter.
        for group in &mut groups {
            for completion in &mut group.completions {
                completion.behaviour_logprobs = vec![-5.0 - batch as f32 * 0.1; 3];
            }
        }
        for line in learner
            .train_batch(&groups, BatchContext::default())
            .unwrap()
        {
            writer.write(&line).unwrap();
        }
    }
}

/// The logged numbers of one step that an exact resume must reproduce: step, total loss,
/// the three terms and the gradient norm.
type LossColumns = (u64, f64, Option<f64>, Option<f64>, Option<f64>, f64);

fn loss_columns(lines: &[StepMetrics]) -> Vec<LossColumns> {
    lines
        .iter()
        .map(|m| {
            (
                m.step,
                m.loss,
                m.loss_grpo,
                m.loss_teacher_sft,
                m.loss_self_sft,
                m.grad_norm,
            )
        })
        .collect()
}

#[test]
fn a_resumed_run_logs_exactly_the_uninterrupted_losses() {
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = Learner::new(
        tiny_policy(0.05),
        resume_config(straight_dir.path()),
        sft_examples(),
        20,
    )
    .unwrap();
    let straight_metrics = straight_dir.path().join("metrics.jsonl");
    let mut writer = MetricsWriter::open(&straight_metrics, None).unwrap();
    train_range(&mut straight, &mut writer, 0..5);

    let dir = tempfile::tempdir().unwrap();
    let config = resume_config(dir.path());
    let metrics_path = dir.path().join("metrics.jsonl");
    let mut first = Learner::new(tiny_policy(0.05), config.clone(), sft_examples(), 20).unwrap();
    let mut writer = MetricsWriter::open(&metrics_path, None).unwrap();
    train_range(&mut first, &mut writer, 0..2);
    let checkpoint = first
        .save_checkpoint(dir.path(), serde_json::Value::Null)
        .unwrap();
    // The first process goes on a little before it "crashes": those lines are cut.
    train_range(&mut first, &mut writer, 2..3);
    drop((first, writer));

    let mut resumed = Learner::new(tiny_policy(0.05), config, sft_examples(), 20).unwrap();
    resumed.restore(&checkpoint).unwrap();
    let mut writer = MetricsWriter::open(&metrics_path, Some(resumed.state().step)).unwrap();
    train_range(&mut resumed, &mut writer, 2..5);

    let expected = read_metrics(&straight_metrics).unwrap();
    let observed = read_metrics(&metrics_path).unwrap();
    assert_eq!(expected.len(), 10, "5 batches × 2 iterations");
    assert_eq!(loss_columns(&observed), loss_columns(&expected));
    assert!(
        expected
            .iter()
            .all(|m| m.loss_teacher_sft.is_some() && m.loss_self_sft.is_some())
    );
    assert!(
        expected
            .iter()
            .any(|m| m.clip_fraction > 0.0 || m.importance_weight_mean != 1.0)
    );
    let values = |learner: &Learner<LoraPolicy>| -> Vec<Vec<f32>> {
        learner
            .policy()
            .trainable_vars()
            .iter()
            .map(|(_, var)| {
                var.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(values(&resumed), values(&straight));
}
