//! The rollout worker loop: lease prompts, sample and score a group per prompt, submit the
//! groups, pick up new adapters, repeat until the learner says the run is over.
//!
//! ```text
//!   ┌─► install the newest adapter the feed holds (between batches only)
//!   │   NextPrompts ──(learner away: backoff + jitter, retry)
//!   │     finished → exit · no prompts → wait retry_after_s
//!   │   behind the learner's adapter? wait up to adapter_wait_s for it
//!   │   Sampler::run: G completions per prompt, scored (executors away: backoff, retry)
//!   │   SubmitGroups ──(learner away: backoff, retry the same groups)
//!   └── outcomes: accepted · duplicate (answered elsewhere) · stale (re-issued) · rejected
//!                 · skipped (a prompt the model cannot take, retired for good)
//! ```
//!
//! **No sampled group is lost to an outage**: a submission that fails is retried with the
//! same groups until the learner answers. Resubmitting is safe because the item id is the
//! learner's idempotency key; if the lease expired meanwhile and another worker answered
//! the item, the learner answers "duplicate", and the worker moves on.
//!
//! **Sharing work**: the learner hands each prompt to one lease at a time, so several
//! workers never sample the same prompt unless a lease expired.
//!
//! **Shutdown** (the cancellation token): sampling stops after the chunk in progress and
//! the lease is abandoned (it expires and the learner re-issues it); groups already scored
//! get `shutdown_grace_s` to reach the learner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_policy::FinishReason;
use tgrpo_proto::learner as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::adapters::{AdapterFeed, AdapterInstaller, InstallOutcome};
use crate::backoff::{Backoff, BackoffConfig, sleep_or_cancel};
use crate::config::RolloutConfig;
use crate::error::{Result, RolloutError};
use crate::learner::LearnerLink;
use crate::sampling::{SampleTask, SampledBatch, Sampler, SamplingSettings};

/// The loop's own settings (the rest lives in the [`Sampler`] and the [`LearnerLink`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// Name in the learner's logs and leases.
    pub worker_id: String,
    /// Prompts asked for per lease; 0 takes the learner's maximum.
    pub max_prompts_per_lease: usize,
    /// Run seed of the sampling streams.
    pub seed: u64,
    /// Backoff while the learner is away.
    pub backoff: BackoffConfig,
    /// How long to wait for the learner's newer adapter before sampling with an old one.
    pub adapter_wait: Duration,
    /// How long scored groups may still take to reach the learner after shutdown.
    pub shutdown_grace: Duration,
}

impl WorkerOptions {
    /// The options a [`RolloutConfig`] describes.
    pub fn from_config(config: &RolloutConfig) -> Self {
        Self {
            worker_id: config.effective_worker_id(),
            max_prompts_per_lease: config.max_prompts_per_lease,
            seed: config.seed,
            backoff: config.backoff.clone(),
            adapter_wait: Duration::from_secs_f64(config.adapter_wait_s),
            shutdown_grace: Duration::from_secs_f64(config.shutdown_grace_s),
        }
    }
}

/// Counters of a worker, observable while it runs ([`RolloutWorker::stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    /// Leases with prompts received.
    pub leases: u64,
    /// Prompts received in those leases.
    pub prompts: u64,
    /// Groups the learner answered for (any outcome).
    pub groups_submitted: u64,
    /// Groups accepted for training.
    pub accepted: u64,
    /// Groups the learner already had (a re-issued lease answered elsewhere first).
    pub duplicates: u64,
    /// Groups dropped as stale (sampled with too old an adapter).
    pub stale: u64,
    /// Groups rejected as malformed or unknown (a bug somewhere: logged as errors).
    pub rejected: u64,
    /// Scored groups that never reached the learner because of shutdown.
    pub abandoned: u64,
    /// Prompts skipped because they do not fit the model's context (each reported to the
    /// learner, which retires it).
    pub skipped_prompts: u64,
    /// Completions sampled.
    pub completions: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Completions without extractable code (not executed).
    pub without_code: u64,
    /// Failed learner calls (each one retried).
    pub learner_errors: u64,
    /// The adapter version sampled with now (`None`: the base model).
    pub adapter_version: Option<u64>,
    /// Adapters installed.
    pub adapters_loaded: u64,
    /// Adapters that did not load (the previous one stayed).
    pub adapters_failed: u64,
    /// Seconds spent sampling and scoring.
    pub sampling_s: f64,
}

/// Why [`RolloutWorker::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The learner said no prompt will be handed out again.
    Finished,
    /// The shutdown token fired.
    Shutdown,
}

/// What a finished worker reports.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSummary {
    /// Why it stopped.
    pub exit: WorkerExit,
    /// Its final counters.
    pub stats: WorkerStats,
    /// Seconds it ran.
    pub wall_s: f64,
}

/// A rollout worker: a sampler, a learner link and an adapter feed.
pub struct RolloutWorker {
    options: WorkerOptions,
    sampler: Sampler,
    learner: Arc<dyn LearnerLink>,
    feed: AdapterFeed,
    installer: AdapterInstaller,
    stats: watch::Sender<WorkerStats>,
}

impl std::fmt::Debug for RolloutWorker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RolloutWorker")
            .field("options", &self.options)
            .field("learner", &self.learner.describe())
            .finish_non_exhaustive()
    }
}

/// How one submission attempt ended.
enum Attempt {
    Answered(pb::SubmitGroupsResponse),
    Failed(tonic::Status),
    /// Shutdown came and the grace period ran out.
    Abandoned,
}

impl RolloutWorker {
    /// A worker that samples with `sampler` (its policy's adapter slot receives the
    /// adapters from `adapters`) and talks to `learner`.
    pub fn new(
        options: WorkerOptions,
        sampler: Sampler,
        learner: Arc<dyn LearnerLink>,
        adapters: AdapterFeed,
    ) -> Self {
        let installer = AdapterInstaller::new(sampler.policy().clone());
        let stats = watch::Sender::new(WorkerStats {
            adapter_version: installer.installed(),
            ..WorkerStats::default()
        });
        Self {
            options,
            sampler,
            learner,
            feed: adapters,
            installer,
            stats,
        }
    }

    /// A receiver of the counters, updated as the worker goes (progress bars, metrics).
    pub fn stats(&self) -> watch::Receiver<WorkerStats> {
        self.stats.subscribe()
    }

    /// Runs until the learner says the run is finished or `shutdown` fires. Errors only
    /// for what retrying cannot fix (the model fails to generate, scoring gives up).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<WorkerSummary> {
        let started = Instant::now();
        let learner = Arc::clone(&self.learner);
        let learner_name = learner.describe();
        let worker_id = self.options.worker_id.clone();
        tracing::info!(worker = %worker_id, learner = %learner_name, "rollout worker started");
        let mut backoff = Backoff::new(self.options.backoff.clone());
        let exit = loop {
            if shutdown.is_cancelled() {
                break WorkerExit::Shutdown;
            }
            self.refresh_adapter().await;
            let request = pb::NextPromptsRequest {
                worker_id: worker_id.clone(),
                max_prompts: u32::try_from(self.options.max_prompts_per_lease).unwrap_or(u32::MAX),
            };
            let answer = tokio::select! {
                answer = learner.next_prompts(request) => answer,
                () = shutdown.cancelled() => break WorkerExit::Shutdown,
            };
            let lease = match answer {
                Ok(lease) => {
                    if backoff.failures() > 0 {
                        tracing::info!(learner = %learner_name, "learner reachable again");
                    }
                    backoff.reset();
                    lease
                }
                Err(status) => {
                    self.stats.send_modify(|stats| stats.learner_errors += 1);
                    let delay = backoff.next_delay();
                    tracing::warn!(learner = %learner_name, code = ?status.code(), message = status.message(), retry_in_ms = delay.as_millis() as u64, "learner unreachable; retrying");
                    if !sleep_or_cancel(delay, &shutdown).await {
                        break WorkerExit::Shutdown;
                    }
                    continue;
                }
            };
            if lease.finished {
                break WorkerExit::Finished;
            }
            if lease.prompts.is_empty() {
                let retry_after = if lease.retry_after_s.is_finite() {
                    lease.retry_after_s.clamp(0.01, 5.0)
                } else {
                    1.0
                };
                if !sleep_or_cancel(Duration::from_secs_f64(retry_after), &shutdown).await {
                    break WorkerExit::Shutdown;
                }
                continue;
            }
            let settings = match lease.rollout.as_ref() {
                Some(rollout) => SamplingSettings::from_rollout(rollout, self.options.seed),
                None => {
                    tracing::error!(lease = %lease.lease_id, "lease carries no rollout settings; ignoring it");
                    if !backoff.wait(&shutdown).await {
                        break WorkerExit::Shutdown;
                    }
                    continue;
                }
            };
            if let Err(err) = settings.validate() {
                tracing::error!(lease = %lease.lease_id, %err, "the learner's rollout settings cannot be sampled; ignoring the lease");
                if !backoff.wait(&shutdown).await {
                    break WorkerExit::Shutdown;
                }
                continue;
            }
            self.catch_up(lease.adapter_version, &shutdown).await;
            let tasks = tasks_of(lease.prompts, &lease.lease_id);
            let prompt_count = tasks.len() as u64;
            self.stats.send_modify(|stats| {
                stats.leases += 1;
                stats.prompts += prompt_count;
            });
            let batch = match self.sampler.run(tasks, &settings, &shutdown).await {
                Ok(batch) => batch,
                Err(RolloutError::Cancelled) => {
                    tracing::info!(lease = %lease.lease_id, "shutdown while sampling; the lease is abandoned and will be re-issued");
                    break WorkerExit::Shutdown;
                }
                Err(err) => return Err(err),
            };
            self.record_batch(&batch);
            let groups = groups_of(&batch, &worker_id, &lease.lease_id);
            tracing::debug!(lease = %lease.lease_id, groups = groups.len(), version = ?batch.adapter_version, seconds = batch.stats.wall_s, "batch sampled");
            if !groups.is_empty() {
                self.submit(learner.as_ref(), groups, &shutdown).await;
            }
        };
        let stats = self.stats.borrow().clone();
        let wall_s = started.elapsed().as_secs_f64();
        tracing::info!(worker = %worker_id, ?exit, accepted = stats.accepted, duplicates = stats.duplicates, stale = stats.stale, rejected = stats.rejected, completions = stats.completions, seconds = wall_s, "rollout worker stopped");
        Ok(WorkerSummary {
            exit,
            stats,
            wall_s,
        })
    }

    /// Installs the feed's newest generation if it is newer than the policy's adapter.
    async fn refresh_adapter(&mut self) {
        let Some(generation) = self.feed.latest() else {
            return;
        };
        match self.installer.offer(generation).await {
            InstallOutcome::Unchanged => {}
            InstallOutcome::Installed(version) => {
                crate::metrics::adapter_installed(version);
                self.stats.send_modify(|stats| {
                    stats.adapter_version = Some(version);
                    stats.adapters_loaded += 1;
                });
            }
            InstallOutcome::Failed(_) => {
                crate::metrics::adapter_failed();
                self.stats.send_modify(|stats| stats.adapters_failed += 1);
            }
        }
    }

    /// When the learner is at a newer adapter than the policy holds, waits (bounded) for
    /// the feed to deliver it, then installs it.
    async fn catch_up(&mut self, learner_version: u64, shutdown: &CancellationToken) {
        self.refresh_adapter().await;
        let held = self.installer.installed().unwrap_or(0);
        if held >= learner_version || self.feed.is_none() || self.options.adapter_wait.is_zero() {
            return;
        }
        tokio::select! {
            _ = self.feed.wait_for_version(learner_version, self.options.adapter_wait) => {}
            () = shutdown.cancelled() => return,
        }
        self.refresh_adapter().await;
        let held = self.installer.installed();
        if held.unwrap_or(0) < learner_version {
            tracing::warn!(held = ?held, learner = learner_version, "sampling with an older adapter than the learner's; its groups may be dropped as stale");
        }
    }

    fn record_batch(&self, batch: &SampledBatch) {
        let skipped = batch
            .tasks
            .iter()
            .filter(|task| task.skipped.is_some())
            .count() as u64;
        crate::metrics::batch_sampled(
            batch.stats.sequences as u64,
            batch.stats.generated_tokens as u64,
            batch.stats.wall_s,
        );
        self.stats.send_modify(|stats| {
            stats.completions += batch.stats.sequences as u64;
            stats.generated_tokens += batch.stats.generated_tokens as u64;
            stats.without_code += batch.stats.without_code as u64;
            stats.skipped_prompts += skipped;
            stats.sampling_s += batch.stats.wall_s;
        });
    }

    /// Submits `groups` until the learner answers; on shutdown, gives it the grace period.
    async fn submit(
        &mut self,
        learner: &dyn LearnerLink,
        groups: Vec<pb::ScoredGroup>,
        shutdown: &CancellationToken,
    ) {
        let grace = self.options.shutdown_grace;
        let mut backoff = Backoff::new(self.options.backoff.clone());
        loop {
            let attempt = if shutdown.is_cancelled() {
                submit_within(learner, groups.clone(), grace).await
            } else {
                let call = learner.submit_groups(groups.clone());
                tokio::pin!(call);
                tokio::select! {
                    answer = &mut call => match answer {
                        Ok(response) => Attempt::Answered(response),
                        Err(status) => Attempt::Failed(status),
                    },
                    () = shutdown.cancelled() => match tokio::time::timeout(grace, &mut call).await {
                        Ok(Ok(response)) => Attempt::Answered(response),
                        Ok(Err(status)) => Attempt::Failed(status),
                        Err(_elapsed) => Attempt::Abandoned,
                    },
                }
            };
            match attempt {
                Attempt::Answered(response) => {
                    self.record_outcomes(&groups, &response);
                    return;
                }
                Attempt::Failed(status) => {
                    crate::metrics::learner_error();
                    self.stats.send_modify(|stats| stats.learner_errors += 1);
                    if shutdown.is_cancelled() {
                        self.abandon(&groups, &status.to_string());
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(learner = %learner.describe(), groups = groups.len(), code = ?status.code(), message = status.message(), retry_in_ms = delay.as_millis() as u64, "submitting groups failed; retrying the same groups");
                    // On shutdown during the wait, the next attempt runs within the grace.
                    sleep_or_cancel(delay, shutdown).await;
                }
                Attempt::Abandoned => {
                    self.abandon(&groups, "the shutdown grace period ran out");
                    return;
                }
            }
        }
    }

    fn abandon(&self, groups: &[pb::ScoredGroup], reason: &str) {
        let count = groups.len() as u64;
        self.stats.send_modify(|stats| stats.abandoned += count);
        tracing::warn!(groups = count, %reason, "shutdown: scored groups not submitted; their leases expire and the learner re-issues the prompts");
    }

    fn record_outcomes(&self, groups: &[pb::ScoredGroup], response: &pb::SubmitGroupsResponse) {
        if response.results.len() != groups.len() {
            tracing::warn!(
                sent = groups.len(),
                answered = response.results.len(),
                "the learner answered for a different number of groups"
            );
        }
        self.stats.send_modify(|stats| {
            for result in &response.results {
                stats.groups_submitted += 1;
                let outcome = pb::GroupOutcome::try_from(result.outcome);
                crate::metrics::group_answered(match outcome {
                    Ok(pb::GroupOutcome::Accepted) => "accepted",
                    Ok(pb::GroupOutcome::Duplicate) => "duplicate",
                    Ok(pb::GroupOutcome::Stale) => "stale",
                    Ok(pb::GroupOutcome::Skipped) => "skipped",
                    _ => "rejected",
                });
                match outcome {
                    Ok(pb::GroupOutcome::Accepted) => stats.accepted += 1,
                    Ok(pb::GroupOutcome::Duplicate) => {
                        stats.duplicates += 1;
                        tracing::debug!(item = %result.item_id, "duplicate: the item was answered before (an expired lease)");
                    }
                    Ok(pb::GroupOutcome::Stale) => {
                        stats.stale += 1;
                        tracing::info!(item = %result.item_id, detail = %result.detail, "group dropped as stale; the learner re-issues the prompt");
                    }
                    // Counted when the batch was sampled (`skipped_prompts`).
                    Ok(pb::GroupOutcome::Skipped) => {
                        tracing::debug!(item = %result.item_id, "skipped prompt retired by the learner");
                    }
                    _ => {
                        stats.rejected += 1;
                        tracing::error!(item = %result.item_id, detail = %result.detail, "group rejected by the learner");
                    }
                }
            }
        });
    }
}

/// One submission attempt bounded by `grace` (after shutdown).
async fn submit_within(
    learner: &dyn LearnerLink,
    groups: Vec<pb::ScoredGroup>,
    grace: Duration,
) -> Attempt {
    match tokio::time::timeout(grace, learner.submit_groups(groups)).await {
        Ok(Ok(response)) => Attempt::Answered(response),
        Ok(Err(status)) => Attempt::Failed(status),
        Err(_elapsed) => Attempt::Abandoned,
    }
}

/// The leased items as sampling tasks (an item without a problem is logged and left to
/// expire: there is nothing to sample).
fn tasks_of(items: Vec<pb::PromptItem>, lease_id: &str) -> Vec<SampleTask> {
    items
        .into_iter()
        .filter_map(|item| match item.problem {
            Some(problem) => Some(SampleTask {
                key: item.item_id,
                problem: problem_from_proto(problem),
            }),
            None => {
                tracing::error!(item = %item.item_id, lease = %lease_id, "leased item carries no problem; skipping it");
                None
            }
        })
        .collect()
}

/// The scored groups of a batch, as the learner takes them. A skipped task becomes a
/// group without completions that names the reason (`skipped`): the learner retires its
/// item instead of re-issuing a prompt no worker of this model can sample.
pub fn groups_of(batch: &SampledBatch, worker_id: &str, lease_id: &str) -> Vec<pb::ScoredGroup> {
    let adapter_version = batch.adapter_version.unwrap_or(0);
    batch
        .tasks
        .iter()
        .map(|task| pb::ScoredGroup {
            item_id: task.key.clone(),
            prompt_id: task.task_id.clone(),
            prompt_tokens: task.prompt_tokens.clone(),
            completions: task
                .samples
                .iter()
                .map(|sample| pb::ScoredCompletion {
                    tokens: sample.tokens.clone(),
                    behaviour_logprobs: sample.behaviour_logprobs.clone(),
                    reward: sample.reward,
                    tests_passed: sample.tests_passed,
                    tests_total: sample.tests_total,
                    finish_reason: finish_reason_name(&sample.finish_reason).to_string(),
                })
                .collect(),
            adapter_version,
            worker_id: worker_id.to_string(),
            lease_id: lease_id.to_string(),
            skipped: task.skipped.clone().unwrap_or_default(),
        })
        .collect()
}

/// OpenAI/vLLM spelling: "stop" for an EOS token or a stop string, "length" for the budget.
fn finish_reason_name(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop(_) => "stop",
        FinishReason::Length => "length",
    }
}

/// A problem received from the learner, as the dataset type.
pub fn problem_from_proto(problem: pb::Problem) -> Problem {
    let format = match pb::TestFormat::try_from(problem.format).unwrap_or(pb::TestFormat::Mbpp) {
        pb::TestFormat::Humaneval => TestFormat::HumanEval,
        pb::TestFormat::Generic => TestFormat::Generic,
        pb::TestFormat::Mbpp | pb::TestFormat::Unspecified => TestFormat::Mbpp,
    };
    Problem {
        task_id: problem.task_id,
        text: problem.text,
        reference: None,
        tests: problem.tests,
        setup_code: problem.setup_code,
        format,
        entry_point: (!problem.entry_point.is_empty()).then_some(problem.entry_point),
        prompt: (!problem.prompt.is_empty()).then_some(problem.prompt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{BatchStats, ScoredSample, TaskSamples};
    use tgrpo_executor::proto::Verdict;

    fn sample(index: usize, reward: f64, finish_reason: FinishReason) -> ScoredSample {
        ScoredSample {
            index,
            seed: index as u64,
            tokens: vec![1, 2, 3],
            text: "x".into(),
            behaviour_logprobs: vec![-0.1, -0.2, -0.3],
            finish_reason,
            code: None,
            verdict: Verdict::Failed,
            tests_passed: 1,
            tests_total: 3,
            reward,
            detail: String::new(),
            syntax_error: false,
            executed: true,
            duration_ms: 1,
        }
    }

    #[test]
    fn groups_carry_version_ids_and_per_completion_results() {
        let batch = SampledBatch {
            adapter_version: Some(7),
            tasks: vec![
                TaskSamples {
                    key: "0:1".into(),
                    task_id: "11".into(),
                    prompt_tokens: vec![9, 9],
                    samples: vec![
                        sample(0, 1.0, FinishReason::Eos),
                        sample(1, 0.0, FinishReason::Length),
                    ],
                    skipped: None,
                },
                TaskSamples {
                    key: "0:2".into(),
                    task_id: "12".into(),
                    prompt_tokens: Vec::new(),
                    samples: Vec::new(),
                    skipped: Some("too long".into()),
                },
            ],
            stats: BatchStats::default(),
        };
        let groups = groups_of(&batch, "w1", "lease-3");
        assert_eq!(groups.len(), 2, "a skipped task is reported too");
        assert_eq!(
            (
                groups[1].item_id.as_str(),
                groups[1].skipped.as_str(),
                groups[1].completions.len()
            ),
            ("0:2", "too long", 0),
            "a skipped task retires its item with the reason and no completions"
        );
        assert!(groups[0].skipped.is_empty());
        let group = &groups[0];
        assert_eq!(
            (group.item_id.as_str(), group.prompt_id.as_str()),
            ("0:1", "11")
        );
        assert_eq!(
            (
                group.adapter_version,
                group.worker_id.as_str(),
                group.lease_id.as_str()
            ),
            (7, "w1", "lease-3")
        );
        assert_eq!(group.prompt_tokens, vec![9, 9]);
        let rewards: Vec<f64> = group.completions.iter().map(|c| c.reward).collect();
        assert_eq!(rewards, vec![1.0, 0.0]);
        let reasons: Vec<&str> = group
            .completions
            .iter()
            .map(|c| c.finish_reason.as_str())
            .collect();
        assert_eq!(reasons, vec!["stop", "length"]);
        assert_eq!(
            group.completions[0].behaviour_logprobs.len(),
            group.completions[0].tokens.len()
        );
        assert_eq!(
            (
                group.completions[0].tests_passed,
                group.completions[0].tests_total
            ),
            (1, 3)
        );

        let base = SampledBatch {
            adapter_version: None,
            ..batch
        };
        assert_eq!(
            groups_of(&base, "w", "l")[0].adapter_version,
            0,
            "the base model is version 0"
        );
    }

    #[test]
    fn proto_problems_come_back_whole() {
        let problem = problem_from_proto(pb::Problem {
            task_id: "HumanEval/3".into(),
            text: "t".into(),
            tests: vec!["def check(c): pass".into()],
            setup_code: String::new(),
            format: pb::TestFormat::Humaneval as i32,
            entry_point: "below_zero".into(),
            prompt: "def below_zero(xs):\n".into(),
        });
        assert_eq!(problem.format, TestFormat::HumanEval);
        assert_eq!(problem.entry_point.as_deref(), Some("below_zero"));
        assert_eq!(problem.prompt.as_deref(), Some("def below_zero(xs):\n"));
        let plain = problem_from_proto(pb::Problem {
            task_id: "1".into(),
            ..Default::default()
        });
        assert_eq!(plain.format, TestFormat::Mbpp);
        assert_eq!((plain.entry_point, plain.prompt), (None, None));
    }
}
