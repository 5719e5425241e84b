//! The learner's gRPC service over real loopback connections: leases that expire are
//! re-issued, a group submitted twice is accepted once, stale groups are dropped and their
//! prompt re-issued, unknown items are rejected, and a whole run completes with every
//! adapter version published in order and a checkpoint to resume from.
//!
//! The policy is the crate's toy model (microseconds per step): these tests are about the
//! service's rules, not about learning.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tgrpo_dataset::Problem;
use tgrpo_learner::testing::ToyPolicy;
use tgrpo_learner::{
    AdapterSink, Learner, LearnerConfig, RunSummary, StopReason, TrainingRun, schedule_length,
};
use tgrpo_proto::learner as pb;
use tgrpo_proto::learner::learner_client::LearnerClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const VOCAB: usize = 24;

/// Records every published version.
#[derive(Default)]
struct RecordingSink {
    versions: Mutex<Vec<(u64, usize)>>,
}

impl AdapterSink for RecordingSink {
    fn publish(&self, version: u64, bytes: Vec<u8>) -> BoxFuture<'_, tgrpo_learner::Result<()>> {
        self.versions.lock().unwrap().push((version, bytes.len()));
        Box::pin(async { Ok(()) })
    }
}

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

fn config(output_dir: &std::path::Path) -> LearnerConfig {
    let mut config = LearnerConfig::default();
    config.grpo.num_generations = 2;
    config.grpo.max_new_tokens = 4;
    config.dual_source.beta = 0.0;
    config.training.learning_rate = 0.01;
    config.training.warmup_steps = 0;
    config.training.gradient_accumulation_steps = 1;
    config.training.prompts_per_step = 2;
    config.training.save_every_steps = 2;
    config.training.output_dir = output_dir.to_path_buf();
    config.learner.lease_timeout_s = 30.0;
    config.learner.finish_linger_s = 0.2;
    config
}

struct Server {
    client: LearnerClient<Channel>,
    shutdown: CancellationToken,
    run: JoinHandle<tgrpo_learner::Result<RunSummary>>,
    sink: Arc<RecordingSink>,
}

async fn start(config: LearnerConfig, problem_count: usize) -> Server {
    let steps = schedule_length(&config, problem_count);
    let learner =
        Learner::new(ToyPolicy::new(VOCAB, 4, 0.0, 1), config, Vec::new(), steps).unwrap();
    let sink = Arc::new(RecordingSink::default());
    let run = TrainingRun::new(learner, problems(problem_count), Some(sink.clone())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(run.serve(listener, shutdown.clone()));
    let client = LearnerClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    Server {
        client,
        shutdown,
        run,
        sink,
    }
}

async fn lease(
    client: &mut LearnerClient<Channel>,
    worker: &str,
    max: u32,
) -> pb::NextPromptsResponse {
    client
        .next_prompts(pb::NextPromptsRequest {
            worker_id: worker.into(),
            max_prompts: max,
        })
        .await
        .unwrap()
        .into_inner()
}

/// A scored group for `item`: two completions, the first rewarded.
fn group(item: &pb::PromptItem, version: u64) -> pb::ScoredGroup {
    let index: u32 = item.problem.as_ref().unwrap().task_id[5..].parse().unwrap();
    pb::ScoredGroup {
        item_id: item.item_id.clone(),
        prompt_id: item.problem.as_ref().unwrap().task_id.clone(),
        prompt_tokens: vec![1, 2 + index % 8],
        completions: (0..2u32)
            .map(|completion| pb::ScoredCompletion {
                tokens: vec![10 + completion, 12 + completion],
                behaviour_logprobs: vec![-2.0, -2.0],
                reward: if completion == 0 { 1.0 } else { 0.0 },
                tests_passed: 1 - completion,
                tests_total: 1,
                finish_reason: "stop".into(),
            })
            .collect(),
        adapter_version: version,
        worker_id: "w".into(),
        lease_id: String::new(),
        skipped: String::new(),
    }
}

async fn submit(
    client: &mut LearnerClient<Channel>,
    groups: Vec<pb::ScoredGroup>,
) -> pb::SubmitGroupsResponse {
    client
        .submit_groups(tokio_stream::iter(groups))
        .await
        .unwrap()
        .into_inner()
}

fn outcomes(response: &pb::SubmitGroupsResponse) -> Vec<pb::GroupOutcome> {
    response
        .results
        .iter()
        .map(|result| pb::GroupOutcome::try_from(result.outcome).unwrap())
        .collect()
}

async fn wait_for_version(client: &mut LearnerClient<Channel>, version: u64) {
    for _ in 0..200 {
        let status = client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.adapter_version >= version {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the learner never reached adapter version {version}");
}

async fn stop(server: Server) -> RunSummary {
    server.shutdown.cancel();
    server.run.await.unwrap().unwrap()
}

#[tokio::test]
async fn expired_lease_is_reissued_and_the_late_answer_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.learner.lease_timeout_s = 0.3;
    config.training.prompts_per_step = 8;
    let mut server = start(config, 8).await;
    let mut slow = server.client.clone();

    let first = lease(&mut slow, "slow", 2).await;
    assert_eq!(first.prompts.len(), 2);
    assert_eq!(first.lease_timeout_s, 0.3);
    assert_eq!(first.rollout.as_ref().unwrap().num_generations, 2);
    let first_ids: Vec<&str> = first
        .prompts
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();

    // Before the deadline another worker gets fresh prompts.
    let fresh = lease(&mut server.client, "fast", 2).await;
    assert!(
        fresh
            .prompts
            .iter()
            .all(|item| !first_ids.contains(&item.item_id.as_str()))
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let reissued = lease(&mut server.client, "fast", 2).await;
    let reissued_ids: Vec<&str> = reissued
        .prompts
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();
    assert_eq!(
        reissued_ids, first_ids,
        "the expired lease's prompts come back, same ids"
    );
    assert_ne!(reissued.lease_id, first.lease_id);
    assert_eq!(
        reissued.prompts[0].problem.as_ref().unwrap().task_id,
        first.prompts[0].problem.as_ref().unwrap().task_id
    );

    // The fast worker answers the re-issued prompts; the slow one's answer is a duplicate.
    let response = submit(
        &mut server.client,
        reissued.prompts.iter().map(|item| group(item, 0)).collect(),
    )
    .await;
    assert_eq!(outcomes(&response), vec![pb::GroupOutcome::Accepted; 2]);
    let late = submit(&mut slow, vec![group(&first.prompts[0], 0)]).await;
    assert_eq!(outcomes(&late), vec![pb::GroupOutcome::Duplicate]);
    assert_eq!((late.accepted, late.duplicates), (0, 1));
    stop(server).await;
}

#[tokio::test]
async fn duplicates_are_accepted_once_and_unknown_items_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.training.prompts_per_step = 8;
    let mut server = start(config, 8).await;
    let leased = lease(&mut server.client, "w", 3).await;
    let item = &leased.prompts[0];
    let mut bogus = group(item, 0);
    bogus.item_id = "7:99".into();
    let mut malformed = group(&leased.prompts[1], 0);
    malformed.completions[0].behaviour_logprobs.pop();
    let response = submit(
        &mut server.client,
        vec![group(item, 0), group(item, 0), bogus, malformed],
    )
    .await;
    assert_eq!(
        outcomes(&response),
        vec![
            pb::GroupOutcome::Accepted,
            pb::GroupOutcome::Duplicate,
            pb::GroupOutcome::Rejected,
            pb::GroupOutcome::Rejected
        ]
    );
    assert!(
        response.results[2].detail.contains("7:99"),
        "{}",
        response.results[2].detail
    );
    assert!(
        response.results[3].detail.contains("behaviour"),
        "{}",
        response.results[3].detail
    );
    // Retried in a later call: still a duplicate.
    let again = submit(&mut server.client, vec![group(item, 0)]).await;
    assert_eq!(outcomes(&again), vec![pb::GroupOutcome::Duplicate]);
    let status = server
        .client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.buffered_groups, status.duplicate_groups), (1, 2));
    // The malformed group's item is still outstanding: it can be answered properly.
    let fixed = submit(&mut server.client, vec![group(&leased.prompts[1], 0)]).await;
    assert_eq!(outcomes(&fixed), vec![pb::GroupOutcome::Accepted]);
    stop(server).await;
}

#[tokio::test]
async fn stale_groups_are_dropped_and_their_prompts_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.grpo.max_staleness = 0;
    config.training.prompts_per_step = 1;
    let mut server = start(config, 4).await;
    // The lease window (one prompt per step, no staleness) hands out one at a time.
    let leased = lease(&mut server.client, "w", 2).await;
    assert_eq!(leased.prompts.len(), 1);
    let a = &leased.prompts[0];
    // a trains (batch of one) → the learner moves to version 1.
    let response = submit(&mut server.client, vec![group(a, 0)]).await;
    assert_eq!(outcomes(&response), vec![pb::GroupOutcome::Accepted]);
    wait_for_version(&mut server.client, 1).await;
    let next = lease(&mut server.client, "w", 1).await;
    let b = &next.prompts[0];
    // b was sampled with version 0 (a worker that had not installed version 1 yet): one
    // behind, and max_staleness is 0.
    let response = submit(&mut server.client, vec![group(b, 0)]).await;
    assert_eq!(outcomes(&response), vec![pb::GroupOutcome::Stale]);
    assert!(response.results[0].detail.contains("max staleness 0"));
    let status = server
        .client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.dropped_stale, 1);
    // b comes back before any fresh prompt, and a fresh answer for it is accepted.
    let again = lease(&mut server.client, "w", 1).await;
    assert_eq!(again.prompts[0].item_id, b.item_id);
    assert!(again.adapter_version >= 1);
    let response = submit(
        &mut server.client,
        vec![group(&again.prompts[0], again.adapter_version)],
    )
    .await;
    assert_eq!(outcomes(&response), vec![pb::GroupOutcome::Accepted]);
    wait_for_version(&mut server.client, 2).await;
    let summary = stop(server).await;
    assert_eq!(summary.reason, StopReason::Shutdown);
    assert_eq!(summary.counters.dropped_stale, 1);
    let metrics = tgrpo_learner::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.last().unwrap().dropped_stale_total, 1);
}

/// Answers every prompt until the learner says it is finished; returns how many answers
/// were accepted or dropped as stale.
async fn answer_everything(mut client: LearnerClient<Channel>) -> usize {
    let mut answered = 0;
    loop {
        let leased = lease(&mut client, "worker", 3).await;
        if leased.finished {
            return answered;
        }
        if leased.prompts.is_empty() {
            tokio::time::sleep(Duration::from_secs_f64(leased.retry_after_s)).await;
            continue;
        }
        let groups = leased
            .prompts
            .iter()
            .map(|item| group(item, leased.adapter_version))
            .collect();
        let response = submit(&mut client, groups).await;
        // Stale answers count too: each is one drop in the learner's counter.
        answered += (response.accepted + response.stale) as usize;
    }
}

#[tokio::test]
async fn a_run_completes_publishes_every_version_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.training.epochs = 2;
    config.learner.finish_linger_s = 1.0;
    let server = start(config, 5).await;
    let answered = answer_everything(server.client.clone()).await;
    // 2 epochs × 5 prompts; groups that went stale while waiting were answered again.
    assert!(answered >= 10, "{answered}");
    let summary = server.run.await.unwrap().unwrap();
    assert_eq!(summary.reason, StopReason::Completed);
    // In batches of 2 → 5 batches, one step and one version each.
    assert_eq!(answered as u64 - summary.counters.dropped_stale, 10);
    assert_eq!((summary.steps, summary.adapter_version), (5, 5));
    let versions: Vec<u64> = server
        .sink
        .versions
        .lock()
        .unwrap()
        .iter()
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(versions, vec![0, 1, 2, 3, 4, 5]);
    let final_model = summary.final_model.unwrap();
    assert!(final_model.join("adapter_model.safetensors").is_file());
    // Checkpoints every 2 steps plus the last, keeping 3.
    let checkpoints: Vec<u64> = tgrpo_learner::checkpoint::list_checkpoints(dir.path())
        .unwrap()
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    assert_eq!(checkpoints, vec![2, 4, 5]);
    let metrics = tgrpo_learner::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 5);
    assert_eq!(metrics.iter().map(|m| m.epoch).max(), Some(1));
}

#[tokio::test]
async fn shutdown_checkpoints_unfinished_work_and_resume_redoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config(dir.path()), 6).await;
    // Two prompts answered and trained, one leased and never answered, one buffered (the
    // lease window, 2 prompts per step × (max staleness 1 + 1), hands out four).
    let leased = lease(&mut server.client, "w", 5).await;
    assert_eq!(leased.prompts.len(), 4);
    let groups = leased.prompts[..3]
        .iter()
        .map(|item| group(item, 0))
        .collect();
    submit(&mut server.client, groups).await;
    wait_for_version(&mut server.client, 1).await;
    let summary = stop(server).await;
    assert_eq!(summary.reason, StopReason::Shutdown);
    assert!(summary.final_model.is_none());
    let checkpoint = summary.last_checkpoint.unwrap();
    assert!(checkpoint.ends_with("checkpoint-1"));

    // Resume: the two unfinished items come back first, then the fifth and sixth prompts.
    let mut config = config(dir.path());
    config.training.resume = true;
    let mut server = start(config, 6).await;
    let status = server
        .client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.step, status.adapter_version), (1, 1));
    let leased_again = lease(&mut server.client, "w", 8).await;
    let ids: Vec<&str> = leased_again
        .prompts
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();
    let expected: Vec<&str> = leased.prompts[2..]
        .iter()
        .map(|item| item.item_id.as_str())
        .collect();
    assert_eq!(&ids[..2], &expected[..]);
    assert_eq!(ids.len(), 4);
    // Items trained before the restart are duplicates, not unknown.
    let response = submit(&mut server.client, vec![group(&leased.prompts[0], 1)]).await;
    assert_eq!(outcomes(&response), vec![pb::GroupOutcome::Duplicate]);
    stop(server).await;
}
