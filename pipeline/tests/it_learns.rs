//! It learns: the RL loop, not only the loss, works.
//!
//! The demo's tiny model gets a short teacher-SFT warm start on the 8 problems the demo's
//! teacher answers. It then trains with GRPO ALONE (α = 1, β = 0, γ = 0: no teacher
//! trace, no imitation of its own samples) on the other 8 — reworded statements with new
//! tests, which it mostly fails — through the real local loop: the learner's training
//! run, a rollout worker, an in-process sandbox pool and the in-process adapter
//! broadcast. The only signal about those problems is the executor's verdict on the
//! policy's own samples; the test asserts that the mean reward rises and that the
//! sampled pass rate on them is higher afterwards.

use std::path::Path;
use std::sync::Arc;

use tgrpo_dataset::Problem;
use tgrpo_executor::Scorer;
use tgrpo_learner::teacher::teacher_examples;
use tgrpo_learner::{BatchContext, Learner, LoraPolicy, LrSchedule, schedule_length};
use tgrpo_pipeline::config::TgrpoConfig;
use tgrpo_pipeline::local::{mean_over, read_curves};
use tgrpo_pipeline::train::{StageOptions, train_loop};
use tgrpo_policy::{LoadOptions, LoraAdapter, ModelSource, Policy};
use tgrpo_rollout::{SampleTask, Sampler, SamplerConfig, SamplingSettings};
use tgrpo_teacher::TraceRecord;

mod common;
use common::executor_config;

/// A passing trace of `problem`'s reference, as the synthesis stage records one.
fn reference_trace(problem: &Problem) -> TraceRecord {
    let code = problem
        .reference
        .clone()
        .expect("demo problems have references");
    serde_json::from_value(serde_json::json!({
        "problem_id": problem.task_id, "sample_index": 0, "messages": [],
        "thinking": null, "answer": format!("```python\n{code}```"), "code": code,
        "raw_text": "", "finish_reason": "stop", "teacher_model": "reference",
        "request_hash": problem.task_id, "passed": true, "reward": 1.0,
    }))
    .expect("a trace record")
}

/// The sampled pass rate of `policy` (with `adapter`) on `problems`, n = 8 at T = 1.
async fn pass_rate(policy: &Policy, adapter: &LoraAdapter, problems: &[Problem]) -> f64 {
    policy
        .adapter_slot()
        .set(Some((0, Arc::new(adapter.clone()))));
    let scorer = Scorer::local(executor_config()).await.unwrap();
    let sampler = Sampler::new(policy.clone(), scorer, SamplerConfig::default()).unwrap();
    let tasks = problems
        .iter()
        .map(|problem| SampleTask {
            key: problem.task_id.clone(),
            problem: problem.clone(),
        })
        .collect();
    let settings = SamplingSettings {
        num_samples: 8,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 40,
        stop: Vec::new(),
        seed: 7,
    };
    let batch = sampler
        .run(tasks, &settings, &Default::default())
        .await
        .unwrap();
    policy.adapter_slot().set(None);
    let samples: Vec<bool> = batch
        .tasks
        .iter()
        .flat_map(|task| task.samples.iter().map(|sample| sample.passed()))
        .collect();
    samples.iter().filter(|passed| **passed).count() as f64 / samples.len() as f64
}

fn config(output_dir: &Path) -> TgrpoConfig {
    let mut config = tgrpo_pipeline::demo::config();
    config.output_dir = output_dir.to_path_buf();
    config.executor = executor_config();
    config.sync_derived();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpo_alone_teaches_problems_the_teacher_never_showed() {
    let dir = tempfile::tempdir().unwrap();
    let problems = tgrpo_pipeline::demo::problems();
    let (taught, unseen) = problems.split_at(tgrpo_pipeline::demo::TAUGHT_PROBLEMS);
    let model_dir = dir.path().join("model");
    tgrpo_pipeline::demo::build_model(&model_dir, &problems).unwrap();
    let policy = Policy::load(&ModelSource::Dir(model_dir), &LoadOptions::default()).unwrap();

    // Warm start: teacher-SFT on the taught problems only, no rollouts.
    let mut warm = config(&dir.path().join("warm"));
    warm.dual_source.alpha = 0.0;
    warm.dual_source.beta = 1.0;
    warm.dual_source.gamma = 0.0;
    warm.training.teacher_traces_per_step = 8;
    let traces: Vec<TraceRecord> = taught.iter().map(reference_trace).collect();
    let examples = teacher_examples(&traces, taught, &policy, false)
        .unwrap()
        .examples;
    assert_eq!(examples.len(), taught.len());
    let trainable = LoraPolicy::new(policy.model().clone(), &warm.lora, 3, "demo").unwrap();
    let mut learner = Learner::new(trainable, warm.learner_config(), examples, 1000).unwrap();
    for _ in 0..30 {
        learner.train_batch(&[], BatchContext::default()).unwrap();
    }
    let warm_adapter = learner.policy().snapshot().unwrap();
    let taught_rate = pass_rate(&policy, &warm_adapter, taught).await;
    let before = pass_rate(&policy, &warm_adapter, unseen).await;
    assert!(
        taught_rate > 0.5,
        "the warm start must have learned the taught problems: {taught_rate}"
    );
    assert!(
        before < 0.5,
        "the unseen problems must start mostly failing: pass rate {before}"
    );

    // GRPO only, on the problems the teacher never answered, through the real loop.
    let mut grpo = config(&dir.path().join("grpo"));
    grpo.dual_source.alpha = 1.0;
    grpo.dual_source.beta = 0.0;
    grpo.dual_source.gamma = 0.0;
    grpo.training.epochs = 12;
    grpo.training.lr_schedule = LrSchedule::Constant;
    // Without an SFT anchor, GRPO alone needs a gentler step than the demo's 3e-3 (at 3e-3
    // the policy collapses to answers that never pass).
    grpo.training.learning_rate = 3e-4;
    grpo.training.save_every_steps = 0;
    grpo.validate().unwrap();
    let learner_config = grpo.learner_config();
    let trainable =
        LoraPolicy::from_adapter(policy.model().clone(), &warm_adapter, 5, "demo").unwrap();
    let steps = schedule_length(&learner_config, unseen.len());
    let learner = Learner::new(trainable, learner_config, Vec::new(), steps).unwrap();
    let (summary, workers) = train_loop(
        &grpo,
        policy.clone(),
        learner,
        unseen.to_vec(),
        &StageOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(summary.steps as usize, steps);
    assert_eq!(workers.len(), 1);

    let (rewards, losses) = read_curves(&grpo.output_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rewards.len(), steps);
    assert!(
        losses
            .iter()
            .all(|(_, grpo, teacher, own)| grpo.is_some() && teacher.is_none() && own.is_none()),
        "only the GRPO term may train: {losses:?}"
    );
    let window = 6;
    let early = mean_over(&rewards, 1..=window).unwrap();
    let late = mean_over(&rewards, steps as u64 + 1 - window..=steps as u64).unwrap();
    let final_model = grpo.output_dir.join("final_model");
    let (trained, _) = LoraAdapter::load_peft(
        &final_model,
        policy.model().config(),
        policy.model().device(),
        policy.model().dtype(),
    )
    .unwrap();
    let after = pass_rate(&policy, &trained, unseen).await;
    eprintln!(
        "taught {taught_rate:.2}; unseen before {before:.2} after {after:.2}; rollout reward {early:.2} → {late:.2} over {steps} steps"
    );
    assert!(
        late > early + 0.2,
        "the mean rollout reward must rise: {early:.2} → {late:.2} ({rewards:?})"
    );
    assert!(
        after > before + 0.2,
        "the pass rate on the unseen problems must rise: {before:.2} → {after:.2}"
    );
}
