//! The coordinator's lease window and skipped prompts:
//!
//! - fresh prompts go out only while fewer than `prompts_per_step × (max_staleness + 1)`
//!   items are in flight, so a fast worker cannot lease so far ahead that its groups turn
//!   stale; items to re-issue go out regardless (no deadlock after an expired lease);
//! - a `skipped` group retires its item for good (the run completes) and is counted.

use std::time::Duration;

use tgrpo_dataset::Problem;
use tgrpo_learner::{Coordinator, LearnerConfig};
use tgrpo_proto::learner as pb;

fn problems(count: usize) -> Vec<Problem> {
    (0..count)
        .map(|index| Problem {
            task_id: format!("task-{index}"),
            text: format!("Write function number {index}."),
            reference: None,
            tests: vec![format!("assert f{index}() == {index}")],
            setup_code: String::new(),
            format: Default::default(),
            entry_point: Some(format!("f{index}")),
            prompt: None,
        })
        .collect()
}

fn config(prompts_per_step: usize, max_staleness: u64) -> LearnerConfig {
    let mut config = LearnerConfig::default();
    config.grpo.num_generations = 2;
    config.grpo.max_new_tokens = 4;
    config.grpo.max_staleness = max_staleness;
    config.dual_source.beta = 0.0;
    config.training.warmup_steps = 0;
    config.training.gradient_accumulation_steps = 1;
    config.training.prompts_per_step = prompts_per_step;
    config.learner.max_prompts_per_lease = 8;
    config.learner.lease_timeout_s = 30.0;
    config
}

fn coordinator(config: &LearnerConfig, count: usize) -> Coordinator {
    Coordinator::new(
        problems(count),
        &config.grpo,
        &config.training,
        &config.learner,
    )
}

fn lease(coordinator: &Coordinator) -> pb::NextPromptsResponse {
    coordinator.next_prompts(&pb::NextPromptsRequest {
        worker_id: "fast".into(),
        max_prompts: 0,
    })
}

fn group(item: &pb::PromptItem, version: u64) -> pb::ScoredGroup {
    pb::ScoredGroup {
        item_id: item.item_id.clone(),
        prompt_id: item.problem.as_ref().unwrap().task_id.clone(),
        prompt_tokens: vec![1, 2],
        completions: (0..2u32)
            .map(|completion| pb::ScoredCompletion {
                tokens: vec![10 + completion],
                behaviour_logprobs: vec![-2.0],
                reward: f64::from(completion),
                tests_passed: completion,
                tests_total: 1,
                finish_reason: "stop".into(),
            })
            .collect(),
        adapter_version: version,
        worker_id: "fast".into(),
        lease_id: String::new(),
        skipped: String::new(),
    }
}

fn skipped(item: &pb::PromptItem) -> pb::ScoredGroup {
    pb::ScoredGroup {
        completions: Vec::new(),
        skipped: "the prompt does not fit the model's context".into(),
        ..group(item, 0)
    }
}

fn outcome(result: &pb::GroupResult) -> pb::GroupOutcome {
    pb::GroupOutcome::try_from(result.outcome).unwrap()
}

#[tokio::test]
async fn fresh_prompts_stay_within_the_staleness_window() {
    // Two prompts per step, one version of staleness allowed: four items in flight.
    let config = config(2, 1);
    let coordinator = coordinator(&config, 20);
    assert_eq!(coordinator.lease_window(), 4);
    let first = lease(&coordinator);
    assert_eq!(first.prompts.len(), 4, "the worker asked for 8");
    let held = lease(&coordinator);
    assert!(held.prompts.is_empty() && !held.finished);
    assert!(
        held.retry_after_s > 0.0 && held.retry_after_s <= 0.1,
        "a held-back worker asks again soon: {}",
        held.retry_after_s
    );

    // Two answers form a batch; while it trains the window is still full.
    for item in &first.prompts[..2] {
        let result = coordinator.submit(group(item, 0)).await;
        assert_eq!(outcome(&result), pb::GroupOutcome::Accepted);
    }
    let batch = coordinator
        .wait_for_batch(Duration::from_millis(10))
        .unwrap();
    assert_eq!(batch.groups.len(), 2);
    assert!(lease(&coordinator).prompts.is_empty(), "batch in training");

    // Trained: two more go out, never more than the window.
    coordinator.set_progress(1, 1, 0);
    let next = lease(&coordinator);
    assert_eq!(next.prompts.len(), 2);
    assert!(lease(&coordinator).prompts.is_empty());
}

#[tokio::test]
async fn max_staleness_zero_makes_the_loop_synchronous() {
    let config = config(3, 0);
    let coordinator = coordinator(&config, 9);
    assert_eq!(coordinator.lease_window(), 3);
    let first = lease(&coordinator);
    assert_eq!(first.prompts.len(), 3);
    for item in &first.prompts {
        coordinator.submit(group(item, 0)).await;
    }
    assert!(
        lease(&coordinator).prompts.is_empty(),
        "answered but not trained yet"
    );
    coordinator
        .wait_for_batch(Duration::from_millis(10))
        .unwrap();
    assert!(lease(&coordinator).prompts.is_empty(), "in training");
    coordinator.set_progress(1, 1, 0);
    assert_eq!(lease(&coordinator).prompts.len(), 3);
}

#[tokio::test]
async fn expired_items_are_reissued_even_when_the_window_is_full() {
    let mut config = config(2, 0);
    config.learner.lease_timeout_s = 0.05;
    let coordinator = coordinator(&config, 6);
    let first = lease(&coordinator);
    assert_eq!(first.prompts.len(), 2);
    assert!(lease(&coordinator).prompts.is_empty());
    // The worker died: its lease expires and the same items go out again.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let again = lease(&coordinator);
    let ids = |response: &pb::NextPromptsResponse| -> Vec<String> {
        response
            .prompts
            .iter()
            .map(|item| item.item_id.clone())
            .collect()
    };
    assert_eq!(ids(&again), ids(&first));
}

#[tokio::test]
async fn a_skipped_prompt_is_retired_and_the_run_completes() {
    let mut config = config(2, 1);
    config.learner.lease_timeout_s = 0.05;
    let coordinator = coordinator(&config, 2);
    let leased = lease(&coordinator);
    assert_eq!(leased.prompts.len(), 2);

    // A skipped group with completions is malformed.
    let mut bad = skipped(&leased.prompts[0]);
    bad.completions = group(&leased.prompts[0], 0).completions;
    let result = coordinator.submit(bad).await;
    assert_eq!(outcome(&result), pb::GroupOutcome::Rejected);
    assert!(
        result.detail.contains("no completions"),
        "{}",
        result.detail
    );

    let result = coordinator.submit(skipped(&leased.prompts[0])).await;
    assert_eq!(outcome(&result), pb::GroupOutcome::Skipped);
    assert!(result.detail.contains("context"), "{}", result.detail);
    let again = coordinator.submit(skipped(&leased.prompts[0])).await;
    assert_eq!(outcome(&again), pb::GroupOutcome::Duplicate);
    assert_eq!(coordinator.counters().skipped, 1);
    assert_eq!(coordinator.status().skipped_items, 1);

    // Its lease expiring does not bring it back.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let reissued = lease(&coordinator);
    let ids: Vec<&str> = reissued
        .prompts
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();
    assert_eq!(ids, vec![leased.prompts[1].item_id.as_str()]);

    // The other item's answer is the last batch; then the schedule is complete.
    let result = coordinator.submit(group(&reissued.prompts[0], 0)).await;
    assert_eq!(outcome(&result), pb::GroupOutcome::Accepted);
    let batch = coordinator
        .wait_for_batch(Duration::from_millis(10))
        .unwrap();
    assert_eq!(batch.groups.len(), 1);
    coordinator.set_progress(1, 1, 0);
    assert!(
        coordinator
            .wait_for_batch(Duration::from_millis(10))
            .is_none(),
        "every item is answered or retired"
    );
    // A checkpoint does not redo the retired item.
    let snapshot = coordinator.snapshot();
    assert!(snapshot.redo.is_empty(), "{snapshot:?}");
    assert_eq!(snapshot.answered.len(), 2);
}
