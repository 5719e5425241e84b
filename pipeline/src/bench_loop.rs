//! The whole-loop benchmark behind `tgrpo bench loop`: rollout throughput of local mode,
//! synchronous against asynchronous, on the same run in the same process.
//!
//! The run is the CPU demo's (its tiny model, its 16 built-in problems, the reference
//! teacher's traces, an in-process sandbox pool): the learner's training run, rollout
//! workers sampling and scoring, adapters through the in-process broadcast — exactly what
//! `tgrpo train` runs in local mode — for a fixed number of optimizer steps, twice:
//!
//! - **synchronous**, `grpo.max_staleness = 0`: the learner's lease window is one batch,
//!   so the worker samples batch k+1 only once batch k is trained and adapter k+1 is out;
//!   sampling and learning take turns;
//! - **asynchronous**, `grpo.max_staleness = N ≥ 1` (the demo's 2): the window is N+1
//!   batches, so the worker samples the next batch while the learner trains this one.
//!
//! Each mode starts from the same fresh adapter and the same seeds. Time is the training
//! run's own (from its start, workers and sandboxes already up, to its end, final
//! checkpoint included; see [`TimedLoop::training`](crate::train::TimedLoop)). Reported
//! per mode: trained groups/s (groups that reached an optimizer step: the useful rate),
//! sampled groups/s and generated tokens/s (what the workers produced, groups sampled
//! ahead and then dropped as stale or left over at the end included), how busy the
//! learner and the samplers were, and staleness. The ratio async/sync of trained groups/s
//! is the gain of overlapping rollout and learning. Modes alternate when repeated, so a
//! change in the machine's load hits both.

use std::path::{Path, PathBuf};

use crate::config::TgrpoConfig;
use crate::data::prepare_data;
use crate::error::{PipelineError, Result};
use crate::model::{load_policy, resolve_model};
use crate::synthesis::synthesize_traces;
use crate::train::{StageOptions, build_learner, timed_train_loop};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoopBenchOptions {
    /// Optimizer steps per measured run (`training.max_steps`).
    pub steps: usize,
    /// `grpo.max_staleness` of the asynchronous mode (≥ 1).
    pub async_staleness: u64,
    /// Rollout workers (`local.rollout_workers`).
    pub workers: usize,
    /// Measured runs of each mode, alternating sync and async.
    pub repeats: usize,
    /// Where the data, traces, demo model and each run's outputs go.
    pub work_dir: PathBuf,
    /// The demo config with changes (e.g. a sandbox pool for tests); `None`: the demo's.
    pub base: Option<TgrpoConfig>,
}

/// One measured run of one mode.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopRunStats {
    /// `grpo.max_staleness` of the run.
    pub max_staleness: u64,
    /// Seconds of the training run.
    pub wall_s: f64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Groups that reached an optimizer step.
    pub groups_trained: u64,
    /// Groups the workers submitted (any outcome).
    pub groups_sampled: u64,
    /// Completions the workers sampled.
    pub completions: u64,
    /// Tokens the workers generated.
    pub generated_tokens: u64,
    /// Groups dropped as too stale.
    pub dropped_stale: u64,
    /// Seconds the learner spent in optimizer steps.
    pub learner_busy_s: f64,
    /// Seconds the workers spent sampling and scoring (summed over workers).
    pub sampling_busy_s: f64,
    /// Mean staleness (learner version − sampling version) of the trained groups.
    pub mean_staleness: f64,
    /// Mean reward of the trained completions.
    pub mean_reward: f64,
}

impl LoopRunStats {
    /// Trained groups per second: the useful rate.
    pub fn groups_per_s(&self) -> f64 {
        per_second(self.groups_trained as f64, self.wall_s)
    }

    /// Sampled groups per second (the workers' output, used or not).
    pub fn sampled_groups_per_s(&self) -> f64 {
        per_second(self.groups_sampled as f64, self.wall_s)
    }

    /// Generated tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        per_second(self.generated_tokens as f64, self.wall_s)
    }

    /// Share of the wall time the learner was in optimizer steps.
    pub fn learner_busy(&self) -> f64 {
        per_second(self.learner_busy_s, self.wall_s)
    }

    /// Share of the wall time the workers were sampling or scoring (can exceed 1 with
    /// several workers).
    pub fn sampling_busy(&self) -> f64 {
        per_second(self.sampling_busy_s, self.wall_s)
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

/// Both modes' runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopBenchReport {
    /// Synchronous runs (`max_staleness = 0`), in order.
    pub sync_runs: Vec<LoopRunStats>,
    /// Asynchronous runs, in order.
    pub async_runs: Vec<LoopRunStats>,
}

impl LoopBenchReport {
    /// The synchronous runs pooled (sums over runs, means weighted by time or groups).
    pub fn sync_total(&self) -> LoopRunStats {
        pooled(&self.sync_runs)
    }

    /// The asynchronous runs pooled.
    pub fn async_total(&self) -> LoopRunStats {
        pooled(&self.async_runs)
    }

    /// Trained groups/s of async over sync: the gain of overlapping rollout and learning.
    pub fn ratio(&self) -> f64 {
        let sync = self.sync_total().groups_per_s();
        if sync > 0.0 {
            self.async_total().groups_per_s() / sync
        } else {
            0.0
        }
    }
}

fn pooled(runs: &[LoopRunStats]) -> LoopRunStats {
    let mut total = LoopRunStats {
        max_staleness: runs.first().map_or(0, |run| run.max_staleness),
        wall_s: 0.0,
        steps: 0,
        groups_trained: 0,
        groups_sampled: 0,
        completions: 0,
        generated_tokens: 0,
        dropped_stale: 0,
        learner_busy_s: 0.0,
        sampling_busy_s: 0.0,
        mean_staleness: 0.0,
        mean_reward: 0.0,
    };
    for run in runs {
        total.wall_s += run.wall_s;
        total.steps += run.steps;
        total.groups_trained += run.groups_trained;
        total.groups_sampled += run.groups_sampled;
        total.completions += run.completions;
        total.generated_tokens += run.generated_tokens;
        total.dropped_stale += run.dropped_stale;
        total.learner_busy_s += run.learner_busy_s;
        total.sampling_busy_s += run.sampling_busy_s;
        total.mean_staleness += run.mean_staleness * run.groups_trained as f64;
        total.mean_reward += run.mean_reward * run.groups_trained as f64;
    }
    if total.groups_trained > 0 {
        total.mean_staleness /= total.groups_trained as f64;
        total.mean_reward /= total.groups_trained as f64;
    }
    total
}

/// The demo config rebased under `work_dir` (data, traces, outputs).
fn bench_config(base: &TgrpoConfig, work_dir: &Path) -> TgrpoConfig {
    let mut config = base.clone();
    config.run_id = "bench-loop".to_string();
    config.output_dir = work_dir.join("prepare");
    let data = work_dir.join("data");
    config.data.output_dir.clone_from(&data);
    config.teacher.cache_dir = Some(data.join("teacher_cache"));
    config.teacher.traces_path = data.join("synthetic_traces.jsonl");
    config.sync_derived_and_paths();
    config
}

/// Runs the benchmark (see the module docs).
pub async fn bench_loop(options: &LoopBenchOptions) -> Result<LoopBenchReport> {
    if options.steps == 0 {
        return Err(PipelineError::stage(
            "bench loop",
            "steps must be at least 1",
        ));
    }
    if options.async_staleness == 0 {
        return Err(PipelineError::stage(
            "bench loop",
            "the asynchronous mode's max_staleness must be at least 1",
        ));
    }
    if options.workers == 0 || options.repeats == 0 {
        return Err(PipelineError::stage(
            "bench loop",
            "workers and repeats must be at least 1",
        ));
    }
    let base = options.base.clone().unwrap_or_else(crate::demo::config);
    let mut config = bench_config(&base, &options.work_dir);
    config.local.rollout_workers = options.workers;
    config.validate()?;
    let quiet = StageOptions::default();
    prepare_data(&config).await?;
    if config.dual_source.beta > 0.0 {
        synthesize_traces(&config, None, &quiet).await?;
    }
    // One model for every run, built (or found) once.
    config.model.source = resolve_model(&config)?;
    config.sync_derived();

    let mut report = LoopBenchReport {
        sync_runs: Vec::new(),
        async_runs: Vec::new(),
    };
    for repeat in 0..options.repeats {
        for staleness in [0, options.async_staleness] {
            let mut run_config = config.clone();
            run_config.grpo.max_staleness = staleness;
            run_config.training.max_steps = Some(options.steps);
            run_config.training.resume = false;
            run_config.output_dir = options
                .work_dir
                .join(format!("run-{repeat}-staleness-{staleness}"));
            if run_config.output_dir.exists() {
                std::fs::remove_dir_all(&run_config.output_dir)
                    .map_err(|err| PipelineError::io(&run_config.output_dir, err))?;
            }
            run_config.sync_derived();
            let stats = measure(&run_config).await?;
            tracing::info!(
                staleness,
                repeat,
                wall_s = stats.wall_s,
                groups_per_s = stats.groups_per_s(),
                tokens_per_s = stats.tokens_per_s(),
                "loop run measured"
            );
            if staleness == 0 {
                report.sync_runs.push(stats);
            } else {
                report.async_runs.push(stats);
            }
        }
    }
    Ok(report)
}

/// One training run of `config` in local mode, measured.
async fn measure(config: &TgrpoConfig) -> Result<LoopRunStats> {
    config.validate()?;
    let learner_config = config.learner_config();
    let problems = tgrpo_learner::role::load_prompts(&learner_config)?;
    // A fresh policy per run: no adapter left installed by the previous one.
    let policy = load_policy(config, &config.model.source).await?;
    let learner = build_learner(config, &learner_config, &policy, &problems, "bench loop").await?;
    let run = timed_train_loop(config, policy, learner, problems, &StageOptions::default()).await?;
    let mut stats = LoopRunStats {
        max_staleness: config.grpo.max_staleness,
        wall_s: run.training.as_secs_f64(),
        steps: run.summary.steps,
        groups_trained: 0,
        groups_sampled: 0,
        completions: 0,
        generated_tokens: 0,
        dropped_stale: run.summary.counters.dropped_stale,
        learner_busy_s: 0.0,
        sampling_busy_s: 0.0,
        mean_staleness: 0.0,
        mean_reward: 0.0,
    };
    for worker in &run.workers {
        stats.groups_sampled += worker.stats.groups_submitted;
        stats.completions += worker.stats.completions;
        stats.generated_tokens += worker.stats.generated_tokens;
        stats.sampling_busy_s += worker.stats.sampling_s;
    }
    let metrics = config.training.output_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).map_err(|err| PipelineError::io(&metrics, err))?;
    let mut staleness_sum = 0.0;
    let mut reward_sum = 0.0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).map_err(|err| {
            PipelineError::stage("bench loop", format!("{}: {err}", metrics.display()))
        })?;
        let number = |name: &str| row.get(name).and_then(serde_json::Value::as_f64);
        stats.learner_busy_s += number("step_seconds").unwrap_or(0.0);
        // A batch trained for several iterations counts once.
        if row.get("iteration").and_then(serde_json::Value::as_u64) != Some(0) {
            continue;
        }
        let groups = number("groups").unwrap_or(0.0);
        stats.groups_trained += groups as u64;
        reward_sum += number("reward_mean").unwrap_or(0.0) * groups;
        if let Some(by_staleness) = row.get("staleness").and_then(serde_json::Value::as_object) {
            for (staleness, count) in by_staleness {
                let staleness: f64 = staleness.parse().unwrap_or(0.0);
                staleness_sum += staleness * count.as_f64().unwrap_or(0.0);
            }
        }
    }
    if stats.groups_trained > 0 {
        stats.mean_staleness = staleness_sum / stats.groups_trained as f64;
        stats.mean_reward = reward_sum / stats.groups_trained as f64;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(wall_s: f64, groups: u64, staleness: f64) -> LoopRunStats {
        LoopRunStats {
            max_staleness: 0,
            wall_s,
            steps: groups / 4,
            groups_trained: groups,
            groups_sampled: groups,
            completions: groups * 8,
            generated_tokens: groups * 100,
            dropped_stale: 0,
            learner_busy_s: wall_s / 2.0,
            sampling_busy_s: wall_s / 2.0,
            mean_staleness: staleness,
            mean_reward: 0.5,
        }
    }

    #[test]
    fn pooled_runs_weigh_by_time_and_groups() {
        let report = LoopBenchReport {
            sync_runs: vec![run(10.0, 40, 0.0), run(30.0, 40, 0.0)],
            async_runs: vec![run(10.0, 40, 1.0), run(10.0, 40, 2.0)],
        };
        let sync = report.sync_total();
        assert_eq!(sync.groups_trained, 80);
        assert!((sync.groups_per_s() - 2.0).abs() < 1e-12);
        let asynchronous = report.async_total();
        assert!((asynchronous.mean_staleness - 1.5).abs() < 1e-12);
        assert!((report.ratio() - 2.0).abs() < 1e-12);
        assert!((asynchronous.tokens_per_s() - 400.0).abs() < 1e-12);
    }

    #[test]
    fn no_time_gives_no_rate() {
        let empty = LoopBenchReport {
            sync_runs: Vec::new(),
            async_runs: vec![run(1.0, 4, 0.0)],
        };
        assert_eq!(empty.ratio(), 0.0);
        assert_eq!(empty.sync_total().groups_per_s(), 0.0);
    }

    #[tokio::test]
    async fn bad_options_are_named() {
        let options = LoopBenchOptions {
            steps: 4,
            async_staleness: 0,
            workers: 1,
            repeats: 1,
            work_dir: PathBuf::from("unused"),
            base: None,
        };
        let err = bench_loop(&options).await.unwrap_err().to_string();
        assert!(err.contains("max_staleness"), "{err}");
        let err = bench_loop(&LoopBenchOptions {
            steps: 0,
            ..options
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("steps"), "{err}");
    }
}
