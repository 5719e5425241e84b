//! The sampling-and-scoring core with a real (scripted tiny) model and real sandboxes:
//! seeds reproduce, results map back to their problems with the rewards that scoring the
//! same code directly gives, batching does not change completions, answers without code
//! never reach an executor, the adapter version is reported, over-long prompts are
//! skipped, and an executor that is down at first is waited for.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tgrpo_dataset::extract;
use tgrpo_executor::{ClientConfig, Scorer, proto as xpb};
use tgrpo_policy::{
    FinishReason, LoadOptions, LoraAdapter, LoraConfig, LoraInit, ModelSource, Policy, tiny,
};
use tgrpo_rollout::{
    BackoffConfig, RewardKind, RolloutError, SampleTask, Sampler, SamplerConfig, SamplingSettings,
    ScoringConfig,
};
use tokio_util::sync::CancellationToken;

use common::{ANSWER, problems, score_directly, scripted_policy};

fn settings(num_samples: usize, temperature: f64, seed: u64) -> SamplingSettings {
    SamplingSettings {
        num_samples,
        temperature,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 24,
        stop: Vec::new(),
        seed,
    }
}

fn tasks() -> Vec<SampleTask> {
    problems()
        .into_iter()
        .map(|problem| SampleTask {
            key: format!("key-{}", problem.task_id),
            problem,
        })
        .collect()
}

fn partial_rewards() -> SamplerConfig {
    SamplerConfig {
        scoring: ScoringConfig {
            reward_kind: RewardKind::Partial,
            ..ScoringConfig::default()
        },
        ..SamplerConfig::default()
    }
}

/// What identifies a sample: its tokens, behaviour log-probs and reward.
type Fingerprint = (Vec<u32>, Vec<f32>, f64);

/// The fingerprint of every sample, task by task.
fn fingerprint(batch: &tgrpo_rollout::SampledBatch) -> Vec<Vec<Fingerprint>> {
    batch
        .tasks
        .iter()
        .map(|task| {
            task.samples
                .iter()
                .map(|sample| {
                    (
                        sample.tokens.clone(),
                        sample.behaviour_logprobs.clone(),
                        sample.reward,
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn same_seed_same_completions_and_each_result_is_scored_against_its_own_problem() {
    let dir = tempfile::tempdir().unwrap();
    // Sharpness 8.5: about half the samples are the program, the rest mangled (syntax
    // errors) or noise (no code).
    let (policy, scripted) = scripted_policy(dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let sampler = Sampler::new(policy.clone(), scorer.clone(), partial_rewards()).unwrap();
    let cancel = CancellationToken::new();

    let first = sampler
        .run(tasks(), &settings(6, 1.0, 7), &cancel)
        .await
        .unwrap();
    let again = sampler
        .run(tasks(), &settings(6, 1.0, 7), &cancel)
        .await
        .unwrap();
    let other = sampler
        .run(tasks(), &settings(6, 1.0, 8), &cancel)
        .await
        .unwrap();
    assert_eq!(
        fingerprint(&first),
        fingerprint(&again),
        "same seed, same completions"
    );
    assert_ne!(
        fingerprint(&first),
        fingerprint(&other),
        "another seed samples differently"
    );
    assert_eq!(first.adapter_version, None);
    assert_eq!(first.stats.sequences, 18);

    let problems = problems();
    let mut exact_rewards = Vec::new();
    let mut executed = 0;
    for (task, problem) in first.tasks.iter().zip(&problems) {
        assert_eq!(task.key, format!("key-{}", problem.task_id));
        assert_eq!(task.task_id, problem.task_id);
        assert_eq!(task.prompt_tokens, sampler.prompt_tokens(problem).unwrap());
        assert_eq!(task.samples.len(), 6);
        for (index, sample) in task.samples.iter().enumerate() {
            assert_eq!(sample.index, index);
            assert_eq!(sample.behaviour_logprobs.len(), sample.tokens.len());
            assert!(
                sample
                    .behaviour_logprobs
                    .iter()
                    .all(|logprob| logprob.is_finite() && *logprob <= 0.0)
            );
            // The text is what the tokens say, and the code is what extraction finds in it.
            let decoded = policy.tokenizer().decode(&sample.tokens, true).unwrap();
            assert_eq!(sample.text, decoded);
            assert_eq!(sample.code, extract::python_code(&sample.text, Some("f")));
            match &sample.code {
                Some(code) => {
                    executed += 1;
                    assert!(sample.executed);
                    let direct =
                        score_directly(&scorer, problem, code, xpb::RewardKind::Partial).await;
                    assert_eq!(
                        (
                            sample.reward,
                            sample.tests_passed,
                            sample.tests_total,
                            sample.verdict
                        ),
                        (
                            direct.reward,
                            direct.tests_passed,
                            direct.tests_total,
                            direct.verdict()
                        ),
                        "task {} sample {index}: {:?}",
                        problem.task_id,
                        sample.text
                    );
                    if sample.text == ANSWER {
                        exact_rewards.push((problem.task_id.clone(), sample.reward));
                    }
                }
                None => {
                    assert!(!sample.executed);
                    assert_eq!(sample.reward, 0.0);
                    assert_eq!(sample.verdict, xpb::Verdict::Error);
                }
            }
        }
    }
    assert!(
        executed > 0 && executed < 18,
        "a mix of programs and noise: {executed}/18 had code"
    );
    let all = || first.tasks.iter().flat_map(|task| &task.samples);
    assert!(
        all().any(|sample| sample.executed && sample.syntax_error),
        "a mangled program was executed"
    );
    assert_eq!(first.stats.executed, executed);
    // The exact program passes all of `ones`, none of `identity`, half of `half`.
    for (task_id, expected) in [("ones", 1.0), ("identity", 0.0), ("half", 0.5)] {
        let rewards: Vec<f64> = exact_rewards
            .iter()
            .filter(|(id, _)| id == task_id)
            .map(|(_, reward)| *reward)
            .collect();
        assert!(!rewards.is_empty(), "no exact answer sampled for {task_id}");
        assert!(
            rewards.iter().all(|reward| *reward == expected),
            "{task_id}: {rewards:?}"
        );
    }
    assert!(
        scripted.answer_tokens.len() < 24,
        "the budget fits the answer"
    );
}

#[tokio::test]
async fn batch_size_does_not_change_completions() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = scripted_policy(dir.path(), 7.0);
    let scorer = common::local_scorer().await;
    let cancel = CancellationToken::new();
    let wide = Sampler::new(policy.clone(), scorer.clone(), SamplerConfig::default()).unwrap();
    let narrow = Sampler::new(
        policy,
        scorer,
        SamplerConfig {
            max_batch_sequences: 4,
            ..SamplerConfig::default()
        },
    )
    .unwrap();
    let wide = wide
        .run(tasks(), &settings(5, 1.0, 3), &cancel)
        .await
        .unwrap();
    let narrow = narrow
        .run(tasks(), &settings(5, 1.0, 3), &cancel)
        .await
        .unwrap();
    assert_eq!(fingerprint(&wide), fingerprint(&narrow));
}

#[tokio::test]
async fn greedy_writes_the_program_and_an_installed_adapter_is_reported_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, scripted) = scripted_policy(dir.path(), 12.0);
    let scorer = common::local_scorer().await;
    let sampler = Sampler::new(policy.clone(), scorer, SamplerConfig::default()).unwrap();
    let cancel = CancellationToken::new();
    let batch = sampler
        .run(tasks(), &settings(2, 0.0, 1), &cancel)
        .await
        .unwrap();
    let mut expected_tokens = scripted.answer_tokens.clone();
    expected_tokens.push(scripted.end_token);
    for task in &batch.tasks {
        for sample in &task.samples {
            assert_eq!(sample.text, ANSWER);
            assert_eq!(sample.tokens, expected_tokens);
            assert_eq!(sample.finish_reason, FinishReason::Eos);
            assert!(
                sample
                    .behaviour_logprobs
                    .iter()
                    .all(|logprob| *logprob == 0.0),
                "greedy choices are certain"
            );
        }
    }
    let binary: Vec<f64> = batch
        .tasks
        .iter()
        .map(|task| task.samples[0].reward)
        .collect();
    assert_eq!(
        binary,
        vec![1.0, 0.0, 0.0],
        "binary reward: only `ones` is fully solved"
    );

    // A non-trivial adapter in the slot: reported, and it changes what the model writes.
    let adapter = LoraAdapter::init(
        policy.model().config(),
        &LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        LoraInit::Random { bound: 3.0 },
        11,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    policy.adapter_slot().set(Some((3, Arc::new(adapter))));
    let adapted = sampler
        .run(tasks(), &settings(2, 0.0, 1), &cancel)
        .await
        .unwrap();
    assert_eq!(adapted.adapter_version, Some(3));
    assert!(
        adapted
            .tasks
            .iter()
            .any(|task| task.samples[0].tokens != expected_tokens)
    );
}

#[tokio::test]
async fn answers_without_code_get_the_no_code_reward_without_reaching_an_executor() {
    let dir = tempfile::tempdir().unwrap();
    // A random tiny model writes noise; no executor listens where the scorer points, so
    // any request that went out would fail the call.
    tiny::write_hf_dir(dir.path(), tgrpo_policy::Family::Qwen2, 3).unwrap();
    let policy = Policy::load(
        &ModelSource::Dir(dir.path().to_path_buf()),
        &LoadOptions::default(),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = listener.local_addr().unwrap().to_string();
    drop(listener);
    let scorer = Scorer::remote(
        &[nowhere],
        ClientConfig {
            max_attempts: 1,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut config = SamplerConfig {
        score_attempts: 1,
        ..SamplerConfig::default()
    };
    config.scoring.reward_kind = RewardKind::Scaled;
    config.scoring.scaled_reward.syntax_error_penalty = -0.75;
    let sampler = Sampler::new(policy, scorer, config).unwrap();
    let batch = sampler
        .run(tasks(), &settings(4, 1.0, 2), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(batch.stats.without_code, 12);
    for sample in batch.tasks.iter().flat_map(|task| &task.samples) {
        assert_eq!(sample.code, None, "{:?}", sample.text);
        assert!(!sample.executed);
        assert_eq!(sample.reward, -0.75);
        assert_eq!(sample.verdict, xpb::Verdict::Error);
        assert_eq!(sample.tests_total, 2);
    }
}

#[tokio::test]
async fn a_prompt_that_does_not_fit_is_skipped_and_the_rest_is_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = scripted_policy(dir.path(), 12.0);
    let sampler = Sampler::new(
        policy,
        common::local_scorer().await,
        SamplerConfig::default(),
    )
    .unwrap();
    let mut tasks = tasks();
    tasks[1].problem.text = "x ".repeat(2_000);
    let batch = sampler
        .run(tasks, &settings(2, 0.0, 1), &CancellationToken::new())
        .await
        .unwrap();
    let skipped = batch.tasks[1].skipped.as_deref().unwrap();
    assert!(skipped.contains("context"), "{skipped}");
    assert!(batch.tasks[1].samples.is_empty());
    assert_eq!(batch.tasks[0].samples.len(), 2);
    assert_eq!(batch.tasks[2].samples.len(), 2);
}

#[tokio::test]
async fn a_cancelled_call_returns_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = scripted_policy(dir.path(), 12.0);
    let sampler = Sampler::new(
        policy,
        common::local_scorer().await,
        SamplerConfig::default(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = sampler
        .run(tasks(), &settings(2, 1.0, 1), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::Cancelled), "{err}");
}

#[tokio::test]
async fn an_executor_that_is_down_at_first_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = scripted_policy(dir.path(), 12.0);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = ClientConfig {
        max_attempts: 2,
        backoff_initial_ms: 20,
        backoff_max_ms: 50,
        cooldown_ms: 50,
        ..ClientConfig::default()
    };
    let scorer = Scorer::remote(&[address.to_string()], client).unwrap();
    let sampler = Sampler::new(
        policy,
        scorer,
        SamplerConfig {
            score_retry: BackoffConfig {
                initial_ms: 50,
                max_ms: 200,
                ..BackoffConfig::default()
            },
            ..SamplerConfig::default()
        },
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let executor = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let listener = tokio::net::TcpListener::bind(address).await.unwrap();
            tgrpo_executor::service::run(common::executor_config(2), listener, shutdown).await
        })
    };
    let batch = sampler
        .run(tasks(), &settings(2, 0.0, 1), &CancellationToken::new())
        .await
        .unwrap();
    let rewards: Vec<f64> = batch
        .tasks
        .iter()
        .map(|task| task.samples[0].reward)
        .collect();
    assert_eq!(rewards, vec![1.0, 0.0, 0.0]);
    shutdown.cancel();
    executor.await.unwrap().unwrap();
}
