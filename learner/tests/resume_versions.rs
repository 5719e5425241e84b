//! Version numbering after a resume: a learner whose adapter sink already announced a
//! version at or above its own (its crashed predecessor published past the last
//! checkpoint) continues numbering above it, so that no version number names two
//! different adapters, subscribers (which only move forward) take the resumed learner's
//! adapter at once, and groups sampled with the lost versions are dropped as stale.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tgrpo_dataset::Problem;
use tgrpo_learner::testing::ToyPolicy;
use tgrpo_learner::{
    AdapterSink, Coordinator, Learner, LearnerConfig, TrainingRun, schedule_length,
};
use tgrpo_proto::learner as pb;
use tokio_util::sync::CancellationToken;

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

fn outcome(result: &pb::GroupResult) -> pb::GroupOutcome {
    pb::GroupOutcome::try_from(result.outcome).unwrap()
}

/// A sink that says an earlier learner announced `announced`, and records publications.
struct EarlierIncarnation {
    announced: u64,
    published: Mutex<Vec<u64>>,
}

impl AdapterSink for EarlierIncarnation {
    fn publish(&self, version: u64, _bytes: Vec<u8>) -> BoxFuture<'_, tgrpo_learner::Result<()>> {
        self.published.lock().unwrap().push(version);
        Box::pin(async { Ok(()) })
    }

    fn latest_published(&self) -> BoxFuture<'_, tgrpo_learner::Result<Option<u64>>> {
        let announced = self.announced;
        Box::pin(async move { Ok(Some(announced)) })
    }
}

#[tokio::test]
async fn a_learner_continues_above_versions_announced_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(2, 1);
    config.training.output_dir = dir.path().to_path_buf();
    config.training.max_steps = Some(1);
    let steps = schedule_length(&config, 4);
    let learner = Learner::new(ToyPolicy::new(24, 4, 0.0, 1), config, Vec::new(), steps).unwrap();
    assert_eq!(learner.adapter_version(), 0);
    let sink = Arc::new(EarlierIncarnation {
        announced: 5,
        published: Mutex::new(Vec::new()),
    });
    let run = TrainingRun::new(learner, problems(4), Some(sink.clone())).unwrap();
    let coordinator = run.coordinator();
    let shutdown = CancellationToken::new();
    let training = tokio::spawn(run.train(shutdown.clone()));

    // The first publication is 5 + max_staleness + 1; leases say so too.
    while coordinator.status().adapter_version == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leased = lease(&coordinator);
    assert_eq!(leased.adapter_version, 7);
    // A group sampled with the lost version 5 is stale; one with 7 trains.
    let result = coordinator.submit(group(&leased.prompts[0], 5)).await;
    assert_eq!(outcome(&result), pb::GroupOutcome::Stale);
    let again = lease(&coordinator);
    let mut items: Vec<pb::PromptItem> = leased.prompts[1..].to_vec();
    items.extend(again.prompts);
    for item in items.iter().take(2) {
        let result = coordinator.submit(group(item, 7)).await;
        assert_eq!(outcome(&result), pb::GroupOutcome::Accepted);
    }
    let summary = tokio::time::timeout(Duration::from_secs(30), training)
        .await
        .expect("one step trains")
        .unwrap()
        .unwrap();
    assert_eq!(summary.adapter_version, 8);
    assert_eq!(*sink.published.lock().unwrap(), vec![7, 8]);
    shutdown.cancel();

    // A learner already above the announced version keeps its numbering.
    let mut fresh = Learner::new(
        ToyPolicy::new(24, 4, 0.0, 1),
        config_at(dir.path()),
        Vec::new(),
        1,
    )
    .unwrap();
    assert_eq!(fresh.continue_versions_after(0), Some(2));
    assert_eq!(fresh.continue_versions_after(1), None);
    assert_eq!(fresh.adapter_version(), 2);
}

fn config_at(dir: &std::path::Path) -> LearnerConfig {
    let mut config = config(2, 1);
    config.training.output_dir = dir.join("other");
    config
}
