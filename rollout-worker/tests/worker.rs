//! Rollout workers against the real learner service on loopback: the workers sample with
//! the scripted tiny model and score in real sandboxes; the learner trains a LoRA adapter
//! on the same base model with its real policy backend and publishes every version on an
//! in-process broadcast, so the workers install the very adapters the learner trained.
//!
//! - a run completes: every prompt answered, rewards equal to scoring the same code
//!   directly, adapter versions rising as the learner publishes them;
//! - two workers share a run without duplicate groups;
//! - a learner that is down at start is reached (backoff);
//! - adapters that do not load leave the last good one in use;
//! - a worker shut down mid-run leaves its lease to be re-issued to another.
//!
//! When the learner trains more slowly than a worker samples, groups sampled with an old
//! adapter are accepted, then dropped as stale when a batch forms and re-issued (the
//! learner's `max_staleness` rule): an item can be accepted more than once, exactly as
//! often as the learner counts stale drops. Tests that need a fixed schedule run the
//! worker in *lockstep*: its next lease waits until the learner has trained everything
//! accepted so far, so batch k is sampled with adapter k.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tgrpo_broadcast::{AdapterPublisher, Broadcast, BroadcastConfig};
use tgrpo_dataset::{Problem, extract};
use tgrpo_executor::{Scorer, proto as xpb};
use tgrpo_learner::{
    AdapterSink, Learner, LearnerConfig, LoraPolicy, RunSummary, StopReason, TrainingRun,
    schedule_length,
};
use tgrpo_policy::{LoraConfig, Policy};
use tgrpo_proto::learner as pb;
use tgrpo_proto::learner::learner_client::LearnerClient;
use tgrpo_rollout::{
    AdapterFeed, BackoffConfig, GrpcLearner, LearnerLink, LearnerTimeouts, RolloutWorker, Sampler,
    SamplerConfig, WorkerExit, WorkerOptions, WorkerSummary,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Forwards the learner's adapters to the broadcast, except that versions from
/// `corrupt_from` on are replaced by bytes that are no adapter (with a valid digest).
struct Sink {
    publisher: AdapterPublisher,
    corrupt_from: Option<u64>,
}

impl AdapterSink for Sink {
    fn publish(&self, version: u64, bytes: Vec<u8>) -> BoxFuture<'_, tgrpo_learner::Result<()>> {
        let bytes = if self.corrupt_from.is_some_and(|first| version >= first) {
            format!("not an adapter, version {version}").into_bytes()
        } else {
            bytes
        };
        AdapterSink::publish(&self.publisher, version, bytes)
    }
}

/// Forwards to the learner and records every group with its outcome; in lockstep, each
/// lease waits until the learner has trained every group accepted so far.
struct Recording {
    inner: GrpcLearner,
    status: LearnerClient<Channel>,
    lockstep: Option<usize>,
    log: Mutex<Vec<(pb::ScoredGroup, pb::GroupOutcome)>>,
}

impl Recording {
    fn new(address: std::net::SocketAddr) -> Arc<Self> {
        Self::build(address, None)
    }

    /// In lockstep with a learner that trains `prompts_per_step` groups per step.
    fn lockstep(address: std::net::SocketAddr, prompts_per_step: usize) -> Arc<Self> {
        Self::build(address, Some(prompts_per_step))
    }

    fn build(address: std::net::SocketAddr, lockstep: Option<usize>) -> Arc<Self> {
        let timeouts = LearnerTimeouts {
            connect: Duration::from_millis(500),
            request: Duration::from_secs(10),
            submit: Duration::from_secs(30),
        };
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        Arc::new(Self {
            inner: GrpcLearner::connect_lazy(&address.to_string(), timeouts).unwrap(),
            status: LearnerClient::new(channel),
            lockstep,
            log: Mutex::new(Vec::new()),
        })
    }

    fn groups(&self) -> Vec<(pb::ScoredGroup, pb::GroupOutcome)> {
        self.log.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<pb::ScoredGroup> {
        self.groups()
            .into_iter()
            .filter(|(_, outcome)| *outcome == pb::GroupOutcome::Accepted)
            .map(|(group, _)| group)
            .collect()
    }

    /// Waits until the learner's step covers every accepted group (or the run is over).
    /// The bound only guards against a hang: on a loaded 2-core machine a step can take
    /// seconds.
    async fn wait_for_training(&self, prompts_per_step: usize) {
        let accepted = self.accepted().len() as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while tokio::time::Instant::now() < deadline {
            let status = self
                .status
                .clone()
                .status(pb::StatusRequest {})
                .await
                .map(tonic::Response::into_inner);
            match status {
                Ok(status)
                    if status.finished || status.step * prompts_per_step as u64 >= accepted =>
                {
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        panic!("the learner never trained the {accepted} accepted groups");
    }
}

impl LearnerLink for Recording {
    fn next_prompts(
        &self,
        request: pb::NextPromptsRequest,
    ) -> BoxFuture<'_, Result<pb::NextPromptsResponse, tonic::Status>> {
        Box::pin(async move {
            if let Some(prompts_per_step) = self.lockstep {
                self.wait_for_training(prompts_per_step).await;
            }
            self.inner.next_prompts(request).await
        })
    }

    fn submit_groups(
        &self,
        groups: Vec<pb::ScoredGroup>,
    ) -> BoxFuture<'_, Result<pb::SubmitGroupsResponse, tonic::Status>> {
        Box::pin(async move {
            let response = self.inner.submit_groups(groups.clone()).await?;
            let mut log = self.log.lock().unwrap();
            for (group, result) in groups.into_iter().zip(&response.results) {
                log.push((group, pb::GroupOutcome::try_from(result.outcome).unwrap()));
            }
            Ok(response)
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn learner_config(output_dir: &std::path::Path) -> LearnerConfig {
    let mut config = LearnerConfig::default();
    config.grpo.num_generations = 4;
    config.grpo.max_new_tokens = 24;
    config.dual_source.beta = 0.0;
    config.training.learning_rate = 1e-3;
    config.training.warmup_steps = 0;
    config.training.gradient_accumulation_steps = 1;
    config.training.prompts_per_step = 2;
    config.training.save_every_steps = 1000;
    config.training.output_dir = output_dir.to_path_buf();
    config.learner.lease_timeout_s = 30.0;
    config.learner.max_prompts_per_lease = 2;
    config.learner.finish_linger_s = 0.5;
    config
}

struct LearnerServer {
    shutdown: CancellationToken,
    run: JoinHandle<tgrpo_learner::Result<RunSummary>>,
}

/// Serves a learner over `problems` on `listener` that trains a LoRA adapter on `policy`'s
/// (shared, frozen) base model and publishes every version on the broadcast.
fn serve_learner(
    config: LearnerConfig,
    problems: Vec<Problem>,
    listener: TcpListener,
    policy: &Policy,
    publisher: AdapterPublisher,
    corrupt_from: Option<u64>,
) -> LearnerServer {
    let steps = schedule_length(&config, problems.len());
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let trainable = LoraPolicy::new(Arc::clone(policy.model()), &lora, 3, "scripted").unwrap();
    let learner = Learner::new(trainable, config, Vec::new(), steps).unwrap();
    let sink = Arc::new(Sink {
        publisher,
        corrupt_from,
    });
    let run = TrainingRun::new(learner, problems, Some(sink)).unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(run.serve(listener, shutdown.clone()));
    LearnerServer { shutdown, run }
}

fn options(name: &str, max_prompts: usize) -> WorkerOptions {
    WorkerOptions {
        worker_id: name.to_string(),
        max_prompts_per_lease: max_prompts,
        seed: 1,
        backoff: BackoffConfig {
            initial_ms: 50,
            max_ms: 300,
            ..BackoffConfig::default()
        },
        adapter_wait: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(2),
    }
}

/// A worker with its own policy (its own adapter slot) on the scripted model in `dir`.
fn worker(
    dir: &std::path::Path,
    scorer: &Scorer,
    link: Arc<Recording>,
    broadcast: &Broadcast,
    options: WorkerOptions,
    shutdown: &CancellationToken,
) -> (RolloutWorker, Policy) {
    let policy = Policy::load(
        &tgrpo_policy::ModelSource::Dir(dir.to_path_buf()),
        &Default::default(),
    )
    .unwrap();
    let sampler = Sampler::new(policy.clone(), scorer.clone(), SamplerConfig::default()).unwrap();
    let feed = AdapterFeed::subscriber(broadcast.subscribe(shutdown));
    (RolloutWorker::new(options, sampler, link, feed), policy)
}

/// Checks each accepted group's rewards by scoring its decoded completions directly, and
/// its prompt tokens against the sampler's rendering of its problem.
async fn check_rewards(
    groups: &[pb::ScoredGroup],
    problems: &[Problem],
    policy: &Policy,
    scorer: &Scorer,
) {
    let by_id: BTreeMap<&str, &Problem> = problems
        .iter()
        .map(|problem| (problem.task_id.as_str(), problem))
        .collect();
    let sampler = Sampler::new(policy.clone(), scorer.clone(), SamplerConfig::default()).unwrap();
    let mut executed = 0;
    for group in groups {
        let problem = by_id[group.prompt_id.as_str()];
        assert_eq!(group.prompt_tokens, sampler.prompt_tokens(problem).unwrap());
        assert_eq!(group.completions.len(), 4);
        for completion in &group.completions {
            assert_eq!(completion.behaviour_logprobs.len(), completion.tokens.len());
            let text = policy.tokenizer().decode(&completion.tokens, true).unwrap();
            let (reward, passed) = match extract::python_code(&text, Some("f")) {
                Some(code) => {
                    executed += 1;
                    let direct =
                        common::score_directly(scorer, problem, &code, xpb::RewardKind::Binary)
                            .await;
                    (direct.reward, direct.tests_passed)
                }
                None => (0.0, 0),
            };
            assert_eq!(
                (completion.reward, completion.tests_passed),
                (reward, passed),
                "{}: {text:?}",
                group.item_id
            );
        }
    }
    assert!(executed > 0, "some completions held code");
}

/// Checks that the accepted groups answer every item of the run, each once plus once per
/// stale drop the learner counted; returns the distinct item ids.
fn check_every_item_answered(
    accepted: &[pb::ScoredGroup],
    items: usize,
    learner: &RunSummary,
) -> BTreeSet<String> {
    let ids: BTreeSet<String> = accepted.iter().map(|group| group.item_id.clone()).collect();
    assert_eq!(ids.len(), items, "every item answered: {ids:?}");
    assert_eq!(
        accepted.len() as u64,
        items as u64 + learner.counters.dropped_stale,
        "an item is accepted again only after a stale drop"
    );
    assert_eq!(
        (learner.counters.duplicates, learner.counters.rejected),
        (0, 0)
    );
    ids
}

async fn finish(server: LearnerServer) -> RunSummary {
    let summary = tokio::time::timeout(Duration::from_secs(120), server.run)
        .await
        .expect("the learner ends after the run")
        .unwrap()
        .unwrap();
    server.shutdown.cancel();
    summary
}

#[tokio::test]
async fn a_worker_answers_every_prompt_with_correct_rewards_and_follows_the_adapters() {
    let model_dir = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(model_dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let broadcast = Broadcast::local("e2e", &BroadcastConfig::default()).unwrap();
    let problems = common::many_problems(8);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = serve_learner(
        learner_config(output.path()),
        problems.clone(),
        listener,
        &policy,
        broadcast.publisher().await.unwrap(),
        None,
    );
    let shutdown = CancellationToken::new();
    let link = Recording::lockstep(address, 2);
    let (worker, worker_policy) = worker(
        model_dir.path(),
        &scorer,
        link.clone(),
        &broadcast,
        options("solo", 2),
        &shutdown,
    );
    let summary: WorkerSummary = worker.run(shutdown.clone()).await.unwrap();
    assert_eq!(summary.exit, WorkerExit::Finished);
    let learner = finish(server).await;
    assert_eq!(
        (learner.reason, learner.steps, learner.adapter_version),
        (StopReason::Completed, 4, 4)
    );

    // In lockstep: every prompt answered exactly once, nothing refused or dropped.
    let groups = link.groups();
    assert!(
        groups
            .iter()
            .all(|(_, outcome)| *outcome == pb::GroupOutcome::Accepted)
    );
    let accepted = link.accepted();
    check_every_item_answered(&accepted, 8, &learner);
    assert_eq!(learner.counters.dropped_stale, 0);
    let answered: BTreeSet<&str> = accepted
        .iter()
        .map(|group| group.prompt_id.as_str())
        .collect();
    assert_eq!(
        answered,
        problems
            .iter()
            .map(|problem| problem.task_id.as_str())
            .collect()
    );
    let stats = &summary.stats;
    assert_eq!(
        (
            stats.accepted,
            stats.duplicates,
            stats.stale,
            stats.rejected,
            stats.abandoned
        ),
        (8, 0, 0, 0, 0)
    );
    assert_eq!((stats.leases, stats.completions), (4, 32));
    assert!(
        accepted
            .iter()
            .all(|group| group.worker_id == "solo" && !group.lease_id.is_empty())
    );

    // Batch k was sampled with the adapter the learner published after step k.
    let versions: Vec<u64> = accepted.iter().map(|group| group.adapter_version).collect();
    assert_eq!(versions, vec![0, 0, 1, 1, 2, 2, 3, 3]);
    // Versions 0-3 were installed before sampling; version 4 only if it came out before the
    // worker's last look (it exits when the learner says the run is over).
    assert_eq!(stats.adapters_failed, 0);
    assert!((4..=5).contains(&stats.adapters_loaded), "{stats:?}");
    let held = worker_policy.adapter_slot().version();
    assert!(held == Some(3) || held == Some(4), "{held:?}");

    check_rewards(&accepted, &problems, &policy, &scorer).await;
}

#[tokio::test]
async fn a_free_running_worker_completes_a_run_whatever_the_learners_pace() {
    let model_dir = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(model_dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let broadcast = Broadcast::local("free", &BroadcastConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = serve_learner(
        learner_config(output.path()),
        common::many_problems(8),
        listener,
        &policy,
        broadcast.publisher().await.unwrap(),
        None,
    );
    let shutdown = CancellationToken::new();
    let link = Recording::new(address);
    let (worker, _) = worker(
        model_dir.path(),
        &scorer,
        link.clone(),
        &broadcast,
        options("free", 2),
        &shutdown,
    );
    let summary = worker.run(shutdown.clone()).await.unwrap();
    assert_eq!(summary.exit, WorkerExit::Finished);
    let learner = finish(server).await;
    assert_eq!(learner.reason, StopReason::Completed);
    check_every_item_answered(&link.accepted(), 8, &learner);
    // One worker's adapter versions only go up, and the run cannot finish on version 0
    // alone: the third batch forms with the learner at version 2.
    let versions: Vec<u64> = link
        .groups()
        .iter()
        .map(|(group, _)| group.adapter_version)
        .collect();
    assert!(
        versions.windows(2).all(|pair| pair[0] <= pair[1]),
        "{versions:?}"
    );
    assert!(*versions.last().unwrap() >= 1, "{versions:?}");
}

#[tokio::test]
async fn two_workers_share_a_run_without_duplicate_groups() {
    let model_dir = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(model_dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let broadcast = Broadcast::local("pair", &BroadcastConfig::default()).unwrap();
    let problems = common::many_problems(12);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = serve_learner(
        learner_config(output.path()),
        problems.clone(),
        listener,
        &policy,
        broadcast.publisher().await.unwrap(),
        None,
    );
    let shutdown = CancellationToken::new();
    let (first_link, second_link) = (Recording::new(address), Recording::new(address));
    let (first, _) = worker(
        model_dir.path(),
        &scorer,
        first_link.clone(),
        &broadcast,
        options("first", 1),
        &shutdown,
    );
    let (second, _) = worker(
        model_dir.path(),
        &scorer,
        second_link.clone(),
        &broadcast,
        options("second", 1),
        &shutdown,
    );
    let (first, second) = tokio::join!(first.run(shutdown.clone()), second.run(shutdown.clone()));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        (first.exit, second.exit),
        (WorkerExit::Finished, WorkerExit::Finished)
    );
    let learner = finish(server).await;

    assert!(
        first.stats.accepted > 0 && second.stats.accepted > 0,
        "both workers got work: {} + {}",
        first.stats.accepted,
        second.stats.accepted
    );
    assert_eq!(
        first.stats.duplicates + second.stats.duplicates,
        0,
        "no prompt was sampled by both"
    );
    let mut accepted = first_link.accepted();
    accepted.extend(second_link.accepted());
    check_every_item_answered(&accepted, 12, &learner);
    check_rewards(&accepted, &problems, &policy, &scorer).await;
}

#[tokio::test]
async fn a_learner_that_is_down_at_start_is_reached_with_backoff() {
    let model_dir = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(model_dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let broadcast = Broadcast::local("late", &BroadcastConfig::default()).unwrap();
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = reserved.local_addr().unwrap();
    drop(reserved);

    let shutdown = CancellationToken::new();
    let link = Recording::new(address);
    let (worker, _) = worker(
        model_dir.path(),
        &scorer,
        link.clone(),
        &broadcast,
        options("early", 2),
        &shutdown,
    );
    let mut stats = worker.stats();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::timeout(
        Duration::from_secs(60),
        stats.wait_for(|stats| stats.learner_errors >= 3),
    )
    .await
    .expect("the worker keeps retrying")
    .unwrap();

    let listener = TcpListener::bind(address).await.unwrap();
    let server = serve_learner(
        learner_config(output.path()),
        common::many_problems(4),
        listener,
        &policy,
        broadcast.publisher().await.unwrap(),
        None,
    );
    let summary = tokio::time::timeout(Duration::from_secs(180), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let learner = finish(server).await;
    assert_eq!(summary.exit, WorkerExit::Finished);
    assert!(summary.stats.learner_errors >= 3);
    check_every_item_answered(&link.accepted(), 4, &learner);
}

#[tokio::test]
async fn adapters_that_do_not_load_leave_the_last_good_one_in_use() {
    let model_dir = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(model_dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let broadcast = Broadcast::local("corrupt", &BroadcastConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = learner_config(output.path());
    // The worker stays at version 1 while the learner moves on: keep its groups trainable.
    config.grpo.max_staleness = 100;
    // Versions 2 and later are bytes that are no adapter (with a valid digest).
    let server = serve_learner(
        config,
        common::many_problems(8),
        listener,
        &policy,
        broadcast.publisher().await.unwrap(),
        Some(2),
    );
    let shutdown = CancellationToken::new();
    let link = Recording::lockstep(address, 2);
    let (worker, worker_policy) = worker(
        model_dir.path(),
        &scorer,
        link.clone(),
        &broadcast,
        options("solo", 2),
        &shutdown,
    );
    let summary = worker.run(shutdown.clone()).await.unwrap();
    let learner = finish(server).await;
    assert_eq!(summary.exit, WorkerExit::Finished);
    check_every_item_answered(&link.accepted(), 8, &learner);
    let versions: Vec<u64> = link
        .accepted()
        .iter()
        .map(|group| group.adapter_version)
        .collect();
    assert_eq!(
        versions,
        vec![0, 0, 1, 1, 1, 1, 1, 1],
        "the groups name the adapter actually used"
    );
    // Versions 2 and 3 were offered (one lease each) and refused; version 4 too if it came
    // out before the worker's last look.
    assert_eq!(summary.stats.adapters_loaded, 2);
    assert!(
        (2..=3).contains(&summary.stats.adapters_failed),
        "{:?}",
        summary.stats
    );
    assert_eq!(summary.stats.adapter_version, Some(1));
    assert_eq!(worker_policy.adapter_slot().version(), Some(1));
}

#[tokio::test]
async fn a_worker_shut_down_mid_run_leaves_its_lease_to_be_reissued() {
    let model_dir = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(model_dir.path(), 8.5);
    let scorer = common::local_scorer().await;
    let broadcast = Broadcast::local("drain", &BroadcastConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = learner_config(output.path());
    config.learner.lease_timeout_s = 1.0;
    let server = serve_learner(
        config,
        common::many_problems(8),
        listener,
        &policy,
        broadcast.publisher().await.unwrap(),
        None,
    );

    let first_shutdown = CancellationToken::new();
    let first_link = Recording::lockstep(address, 2);
    let (first, _) = worker(
        model_dir.path(),
        &scorer,
        first_link.clone(),
        &broadcast,
        options("first", 2),
        &first_shutdown,
    );
    let mut stats = first.stats();
    let running = tokio::spawn(first.run(first_shutdown.clone()));
    // Stop it as soon as it holds its second lease (it is sampling for it).
    tokio::time::timeout(
        Duration::from_secs(120),
        stats.wait_for(|stats| stats.leases >= 2),
    )
    .await
    .unwrap()
    .unwrap();
    first_shutdown.cancel();
    let first = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.exit, WorkerExit::Shutdown);
    assert!(
        first.stats.accepted >= 2 && first.stats.accepted <= 4,
        "{:?}",
        first.stats
    );

    let second_shutdown = CancellationToken::new();
    let second_link = Recording::lockstep(address, 2);
    let (second, _) = worker(
        model_dir.path(),
        &scorer,
        second_link.clone(),
        &broadcast,
        options("second", 2),
        &second_shutdown,
    );
    let second = second.run(second_shutdown.clone()).await.unwrap();
    assert_eq!(second.exit, WorkerExit::Finished);
    let learner = finish(server).await;
    assert_eq!(learner.reason, StopReason::Completed);

    let mut accepted = first_link.accepted();
    accepted.extend(second_link.accepted());
    check_every_item_answered(&accepted, 8, &learner);
}
