//! The meeting point of rollout workers and the training loop: prompt leases out, scored
//! groups in, batches to the trainer.
//!
//! [`Coordinator`] is what the gRPC service wraps, and what local mode can call directly:
//! its methods take and return the `tgrpo.learner.v1` messages, so both paths run the
//! same rules. It enforces them at submission: an unknown item or a malformed group is
//! rejected, an item answered before is a duplicate (accepted once), and a group sampled
//! more than `max_staleness` adapter versions ago is dropped and its prompt re-issued.
//! The staleness rule is applied again when a batch is formed, since versions move on
//! while groups wait. A group marked `skipped` (the worker cannot sample the prompt, e.g.
//! it does not fit the model's context) retires its item without training on it, so an
//! unsampleable prompt does not come back forever.
//!
//! **Lease window**: fresh prompts are handed out only while fewer than
//! `prompts_per_step × (max_staleness + 1)` items are in flight (leased, queued for
//! re-issue, answered and waiting, or in the batch being trained). A worker leasing
//! further ahead would sample with an adapter that is more than `max_staleness` versions
//! old by the time its groups are trained, and they would be dropped. With
//! `max_staleness = 0` this makes the loop synchronous: the next batch is leased only once
//! the previous one is trained. Items re-issued after an expired lease or a stale answer
//! are already counted, so they go out regardless.
//!
//! The state sits behind one `std::sync::Mutex`: nothing awaits while holding it, and the
//! trainer thread waits on a `Condvar` for a full batch, while submitters wait on a tokio
//! `Notify` when the buffer is full (backpressure instead of unbounded memory).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_proto::learner as pb;
use tokio::sync::Notify;

use crate::config::{GrpoConfig, ServiceConfig, TrainingConfig};
use crate::groups::{Completion, ScoredGroup};
use crate::scheduler::{Answer, Item, ItemId, PromptScheduler, ScheduleSnapshot};

/// How soon a worker held back by the lease window asks again, in seconds.
const WINDOW_RETRY_S: f64 = 0.1;

/// Groups the trainer takes as one batch.
#[derive(Debug)]
pub struct Batch {
    /// The groups, ordered by item id (so a batch does not depend on arrival order).
    pub groups: Vec<ScoredGroup>,
    /// The items they answer.
    pub items: Vec<Item>,
    /// The epoch of the newest item in the batch.
    pub epoch: u64,
}

/// Counters the coordinator keeps (all since the start of the run, resumes included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    /// Groups accepted for training.
    pub accepted: u64,
    /// Groups dropped for staleness (at submission or at batch formation).
    pub dropped_stale: u64,
    /// Duplicate submissions ignored.
    pub duplicates: u64,
    /// Malformed or unknown submissions.
    pub rejected: u64,
    /// Items retired because a worker could not sample them (`skipped` groups).
    pub skipped: u64,
}

struct State {
    scheduler: PromptScheduler,
    buffer: Vec<(Item, ScoredGroup)>,
    /// Items taken into a batch the trainer is working on.
    in_training: Vec<Item>,
    adapter_version: u64,
    step: u64,
    skipped_steps: u64,
    counters: CoordinatorCounters,
    /// No more batches will be trained (complete, max steps, or shut down).
    finished: bool,
}

/// Shared state between the service handlers and the trainer.
pub struct Coordinator {
    state: Mutex<State>,
    batch_ready: Condvar,
    space_freed: Notify,
    problems: Arc<Vec<Problem>>,
    grpo: GrpoConfig,
    service: ServiceConfig,
    prompts_per_step: usize,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Coordinator")
            .field("problems", &self.problems.len())
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator over `problems` (the prompt set) with the run's settings.
    pub fn new(
        problems: Vec<Problem>,
        grpo: &GrpoConfig,
        training: &TrainingConfig,
        service: &ServiceConfig,
    ) -> Self {
        let scheduler = PromptScheduler::new(
            problems.len(),
            training.epochs as u64,
            training.seed,
            Duration::from_secs_f64(service.lease_timeout_s),
        );
        Self {
            state: Mutex::new(State {
                scheduler,
                buffer: Vec::new(),
                in_training: Vec::new(),
                adapter_version: 0,
                step: 0,
                skipped_steps: 0,
                counters: CoordinatorCounters::default(),
                finished: false,
            }),
            batch_ready: Condvar::new(),
            space_freed: Notify::new(),
            problems: Arc::new(problems),
            grpo: grpo.clone(),
            service: service.clone(),
            prompts_per_step: training.prompts_per_step,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters and queues behind, still
        // consistent enough to report and shut down with.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The prompt set.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Leases prompts to a worker (`NextPrompts`).
    pub fn next_prompts(&self, request: &pb::NextPromptsRequest) -> pb::NextPromptsResponse {
        let max = match request.max_prompts as usize {
            0 => self.service.max_prompts_per_lease,
            asked => asked.min(self.service.max_prompts_per_lease),
        };
        let mut state = self.lock();
        let in_flight =
            state.scheduler.outstanding() + state.buffer.len() + state.in_training.len();
        let max_fresh = self.lease_window().saturating_sub(in_flight);
        let lease = if state.finished {
            None
        } else {
            state
                .scheduler
                .lease_with_fresh_limit(max, max_fresh, Instant::now())
        };
        // Held back by the lease window: the next batch is trained within a step, so
        // look again soon rather than at the next lease deadline.
        let held_back = lease.is_none() && max_fresh == 0 && !state.scheduler.fresh_exhausted();
        // Only the end of training ends the run for workers: while the last batches
        // train, a group may still turn stale and its prompt come back.
        let finished = state.finished;
        let retry_after_s = match (&lease, state.scheduler.next_deadline()) {
            (Some(_), _) => 0.0,
            (None, _) if held_back => WINDOW_RETRY_S,
            (None, Some(deadline)) => deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .clamp(0.05, 1.0),
            // Everything is answered; the last batches are training.
            (None, None) => 0.2,
        };
        let adapter_version = state.adapter_version;
        drop(state);
        let (lease_id, prompts) = match lease {
            Some(lease) => {
                tracing::debug!(worker = %request.worker_id, lease = %lease.lease_id, prompts = lease.items.len(), "lease issued");
                let prompts = lease
                    .items
                    .iter()
                    .map(|item| pb::PromptItem {
                        item_id: item.id.to_string(),
                        epoch: item.id.epoch,
                        problem: Some(problem_to_proto(&self.problems[item.prompt_index])),
                    })
                    .collect();
                (lease.lease_id, prompts)
            }
            None => (String::new(), Vec::new()),
        };
        pb::NextPromptsResponse {
            lease_id,
            prompts,
            lease_timeout_s: self.service.lease_timeout_s,
            adapter_version,
            rollout: Some(self.rollout_settings()),
            finished,
            retry_after_s,
        }
    }

    /// Most items in flight at once before fresh prompts are held back (see the module
    /// docs): `prompts_per_step × (max_staleness + 1)`.
    pub fn lease_window(&self) -> usize {
        let batches = usize::try_from(self.grpo.max_staleness)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        self.prompts_per_step.max(1).saturating_mul(batches)
    }

    /// The `[grpo]` sampling settings, as sent to workers.
    pub fn rollout_settings(&self) -> pb::RolloutSettings {
        pb::RolloutSettings {
            num_generations: self.grpo.num_generations as u32,
            temperature: self.grpo.temperature,
            top_p: self.grpo.top_p,
            top_k: self.grpo.top_k as u32,
            max_new_tokens: self.grpo.max_new_tokens as u32,
        }
    }

    /// Takes one submitted group (`SubmitGroups`), waiting while the buffer is full.
    pub async fn submit(&self, group: pb::ScoredGroup) -> pb::GroupResult {
        loop {
            // Register interest before checking, so a wake-up between the check and the
            // wait is not lost.
            let freed = self.space_freed.notified();
            {
                let state = self.lock();
                if state.finished || state.buffer.len() < self.service.max_buffered_groups {
                    break;
                }
            }
            freed.await;
        }
        let result = self.submit_now(group);
        crate::prometheus::record_group(outcome_label(result.outcome));
        result
    }

    fn submit_now(&self, group: pb::ScoredGroup) -> pb::GroupResult {
        let item_id_text = group.item_id.clone();
        let result = |outcome: pb::GroupOutcome, detail: String| pb::GroupResult {
            item_id: item_id_text.clone(),
            outcome: outcome as i32,
            detail,
        };
        let mut state = self.lock();
        let item_id = match group.item_id.parse::<ItemId>() {
            Ok(id) => id,
            Err(reason) => {
                state.counters.rejected += 1;
                return result(pb::GroupOutcome::Rejected, reason);
            }
        };
        if state.scheduler.is_answered(item_id) {
            state.counters.duplicates += 1;
            return result(pb::GroupOutcome::Duplicate, String::new());
        }
        if !state.scheduler.is_outstanding(item_id) {
            state.counters.rejected += 1;
            return result(
                pb::GroupOutcome::Rejected,
                format!("item {item_id} was not issued by this learner"),
            );
        }
        if !group.skipped.is_empty() {
            return self.retire(&mut state, item_id, &group, result);
        }
        let scored = group_from_proto(group);
        if let Err(err) = scored.validate() {
            state.counters.rejected += 1;
            return result(pb::GroupOutcome::Rejected, err.to_string());
        }
        let Answer::Accepted(item) = state.scheduler.answer(item_id) else {
            unreachable!("an outstanding, unanswered item is accepted");
        };
        if self.is_stale(state.adapter_version, scored.adapter_version) {
            state.counters.dropped_stale += 1;
            state.scheduler.requeue(item);
            tracing::debug!(item = %item_id, sampled_with = scored.adapter_version, current = state.adapter_version, "stale group dropped");
            return result(
                pb::GroupOutcome::Stale,
                format!(
                    "sampled with adapter {} but the learner is at {} (max staleness {})",
                    scored.adapter_version, state.adapter_version, self.grpo.max_staleness
                ),
            );
        }
        state.counters.accepted += 1;
        state.buffer.push((item, scored));
        drop(state);
        self.batch_ready.notify_all();
        result(pb::GroupOutcome::Accepted, String::new())
    }

    /// Retires the item of a `skipped` group: answered, never trained on, not re-issued.
    fn retire(
        &self,
        state: &mut State,
        item_id: ItemId,
        group: &pb::ScoredGroup,
        result: impl Fn(pb::GroupOutcome, String) -> pb::GroupResult,
    ) -> pb::GroupResult {
        if !group.completions.is_empty() {
            state.counters.rejected += 1;
            return result(
                pb::GroupOutcome::Rejected,
                format!(
                    "a skipped group carries no completions, this one has {}",
                    group.completions.len()
                ),
            );
        }
        let Answer::Accepted(_item) = state.scheduler.answer(item_id) else {
            unreachable!("an outstanding, unanswered item is accepted");
        };
        state.counters.skipped += 1;
        tracing::warn!(item = %item_id, prompt = %group.prompt_id, worker = %group.worker_id, reason = %group.skipped, "prompt skipped by a worker; the item is retired");
        // The run may now be complete: wake the trainer to notice.
        self.batch_ready.notify_all();
        result(pb::GroupOutcome::Skipped, group.skipped.clone())
    }

    fn is_stale(&self, current: u64, sampled_with: u64) -> bool {
        current.saturating_sub(sampled_with) > self.grpo.max_staleness
    }

    /// Where training stands (`Status`).
    pub fn status(&self) -> pb::StatusResponse {
        let state = self.lock();
        pb::StatusResponse {
            step: state.step,
            adapter_version: state.adapter_version,
            epoch: state.scheduler.epoch(),
            outstanding_items: state.scheduler.outstanding() as u64,
            buffered_groups: state.buffer.len() as u64,
            dropped_stale: state.counters.dropped_stale,
            duplicate_groups: state.counters.duplicates,
            skipped_steps: state.skipped_steps,
            finished: state.finished,
            skipped_items: state.counters.skipped,
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> CoordinatorCounters {
        self.lock().counters
    }

    /// Blocks the trainer thread until a batch is ready: `prompts_per_step` groups, or the
    /// last groups once every prompt is answered. `None` when training is over. Wakes up at
    /// least every `poll` to notice stale groups and expired leases.
    pub fn wait_for_batch(&self, poll: Duration) -> Option<Batch> {
        let mut state = self.lock();
        loop {
            if state.finished {
                return None;
            }
            self.drop_stale_buffered(&mut state);
            let complete = state.scheduler.is_complete();
            if state.buffer.len() >= self.prompts_per_step || (complete && !state.buffer.is_empty())
            {
                let batch = self.take_batch(&mut state);
                drop(state);
                self.space_freed.notify_waiters();
                return Some(batch);
            }
            if complete {
                return None;
            }
            state = self
                .batch_ready
                .wait_timeout(state, poll)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    fn drop_stale_buffered(&self, state: &mut State) {
        let current = state.adapter_version;
        let buffered = std::mem::take(&mut state.buffer);
        for (item, group) in buffered {
            if self.is_stale(current, group.adapter_version) {
                state.counters.dropped_stale += 1;
                state.scheduler.requeue(item);
            } else {
                state.buffer.push((item, group));
            }
        }
    }

    fn take_batch(&self, state: &mut State) -> Batch {
        state.buffer.sort_by_key(|(item, _)| item.id);
        let count = self.prompts_per_step.min(state.buffer.len());
        let taken: Vec<(Item, ScoredGroup)> = state.buffer.drain(..count).collect();
        let epoch = taken
            .iter()
            .map(|(item, _)| item.id.epoch)
            .max()
            .unwrap_or(0);
        let (items, groups): (Vec<Item>, Vec<ScoredGroup>) = taken.into_iter().unzip();
        state.in_training = items.clone();
        Batch {
            groups,
            items,
            epoch,
        }
    }

    /// Records where training stands (after each batch, and on start after a resume):
    /// adapter version, step and skipped steps; the batch in training is done.
    pub fn set_progress(&self, adapter_version: u64, step: u64, skipped_steps: u64) {
        let mut state = self.lock();
        state.adapter_version = adapter_version;
        state.step = step;
        state.skipped_steps = skipped_steps;
        state.in_training.clear();
        drop(state);
        crate::prometheus::record_adapter_version(adapter_version);
    }

    /// Ends training: the trainer's next wait returns `None`, workers hear `finished`.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.batch_ready.notify_all();
        self.space_freed.notify_waiters();
    }

    /// Whether training is over.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// The schedule's state for a checkpoint: groups buffered or in training are redone
    /// after a restart.
    pub fn snapshot(&self) -> ScheduleSnapshot {
        let state = self.lock();
        let untrained: Vec<Item> = state
            .buffer
            .iter()
            .map(|(item, _)| *item)
            .chain(state.in_training.iter().copied())
            .collect();
        state.scheduler.snapshot(&untrained)
    }

    /// Continues the schedule from a checkpoint.
    pub fn restore(&self, snapshot: &ScheduleSnapshot) {
        let mut state = self.lock();
        state.scheduler.restore(snapshot);
        state.buffer.clear();
        state.in_training.clear();
    }
}

/// The `outcome` label of a group answer in the learner's Prometheus metrics.
fn outcome_label(outcome: i32) -> &'static str {
    match pb::GroupOutcome::try_from(outcome) {
        Ok(pb::GroupOutcome::Accepted) => "accepted",
        Ok(pb::GroupOutcome::Stale) => "stale",
        Ok(pb::GroupOutcome::Duplicate) => "duplicate",
        Ok(pb::GroupOutcome::Skipped) => "skipped",
        _ => "rejected",
    }
}

/// A dataset problem as sent to workers.
pub fn problem_to_proto(problem: &Problem) -> pb::Problem {
    pb::Problem {
        task_id: problem.task_id.clone(),
        text: problem.text.clone(),
        tests: problem.tests.clone(),
        setup_code: problem.setup_code.clone(),
        format: match problem.format {
            TestFormat::Mbpp => pb::TestFormat::Mbpp,
            TestFormat::HumanEval => pb::TestFormat::Humaneval,
            TestFormat::Generic => pb::TestFormat::Generic,
        } as i32,
        entry_point: problem.entry_point.clone().unwrap_or_default(),
        prompt: problem.prompt.clone().unwrap_or_default(),
    }
}

/// A problem received from the learner, back as the dataset type (for workers).
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

/// A submitted group as the learner's domain type.
pub fn group_from_proto(group: pb::ScoredGroup) -> ScoredGroup {
    ScoredGroup {
        key: group.item_id,
        prompt_id: group.prompt_id,
        prompt_tokens: group.prompt_tokens,
        completions: group
            .completions
            .into_iter()
            .map(|completion| Completion {
                tokens: completion.tokens,
                behaviour_logprobs: completion.behaviour_logprobs,
                reward: completion.reward,
            })
            .collect(),
        adapter_version: group.adapter_version,
    }
}
