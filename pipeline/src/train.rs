//! The train stage in local single-node mode: the learner, `local.rollout_workers` rollout
//! workers, an executor pool and the adapter broadcast, all in this process.
//!
//! The parts are the distributed roles' own: the learner's [`TrainingRun`] (its
//! coordinator, training thread, checkpoints and metrics), the rollout crate's
//! [`RolloutWorker`] loop, the executor's [`Scorer`] and the broadcast's in-process
//! transport. Only the transports differ: workers call the coordinator directly
//! ([`CoordinatorLink`]) and adapters travel through [`Broadcast::local`] instead of NATS.
//! Distributed mode runs the same roles as processes (`tgrpo learner --config FILE`,
//! `tgrpo rollout --config FILE`, `tgrpo executor --config FILE`) with the same file.
//!
//! Outputs in `output_dir`: `checkpoint-N/`, `final_model/` (the PEFT adapter),
//! `metrics.jsonl` (one line per optimizer step), `report.svg` (reward, losses, KL) and
//! `config.toml` (the config the run used).
//!
//! Resuming: a run whose `final_model/` exists is complete and is not retrained. A run
//! with checkpoints but no final model continues from the newest checkpoint when
//! `training.resume` is set (`--resume`; `tgrpo all` and `tgrpo local` set it), and
//! refuses to start over silently otherwise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tgrpo_broadcast::Broadcast;
use tgrpo_dataset::Problem;
use tgrpo_executor::Scorer;
use tgrpo_learner::{AdapterSink, Learner, LoraPolicy, RunSummary, StopReason, TrainingRun};
use tgrpo_policy::Policy;
use tgrpo_rollout::{
    AdapterFeed, LearnerLink, RolloutWorker, Sampler, WorkerOptions, WorkerSummary,
};
use tokio_util::sync::CancellationToken;

use crate::config::TgrpoConfig;
use crate::error::{PipelineError, Result};
use crate::link::CoordinatorLink;
use crate::model::{load_policy, resolve_model};
use crate::progress;

/// How a stage is run: progress bars or not, and the token that interrupts it.
#[derive(Debug, Clone, Default)]
pub struct StageOptions {
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Cancelled on SIGINT/SIGTERM; the stage stops in a resumable state.
    pub cancel: CancellationToken,
}

/// What the train stage did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The run was already complete (its `final_model/` exists): nothing was trained.
    pub already_done: bool,
    /// The learner's summary, when training ran.
    pub summary: Option<RunSummary>,
    /// Each rollout worker's summary, when training ran.
    pub workers: Vec<WorkerSummary>,
    /// Seconds the stage took.
    pub wall_s: f64,
    /// `output_dir/final_model`.
    pub final_model: PathBuf,
    /// `output_dir/metrics.jsonl`.
    pub metrics: PathBuf,
    /// `output_dir/report.svg`.
    pub report: PathBuf,
}

/// Whether `dir` holds a saved PEFT adapter.
pub fn is_adapter_dir(dir: &std::path::Path) -> bool {
    dir.join("adapter_model.safetensors").is_file() && dir.join("adapter_config.json").is_file()
}

/// Runs the train stage in local mode (see the module docs).
pub async fn train(config: &TgrpoConfig, options: &StageOptions) -> Result<TrainReport> {
    config.validate()?;
    let started = Instant::now();
    let output_dir = config.output_dir.clone();
    let final_model = config.final_model_dir();
    let metrics_path = output_dir.join("metrics.jsonl");
    let report_path = output_dir.join("report.svg");
    let mut report = TrainReport {
        already_done: false,
        summary: None,
        workers: Vec::new(),
        wall_s: 0.0,
        final_model: final_model.clone(),
        metrics: metrics_path.clone(),
        report: report_path.clone(),
    };
    if is_adapter_dir(&final_model) {
        tracing::info!(final_model = %final_model.display(), "already trained; remove the output directory to train again");
        if !report_path.exists() && metrics_path.exists() {
            write_training_report(config, &metrics_path, &report_path)?;
        }
        report.already_done = true;
        report.wall_s = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    if !config.training.resume
        && let Some(checkpoint) = tgrpo_learner::checkpoint::latest_checkpoint(&output_dir)?
    {
        return Err(PipelineError::stage(
            "train",
            format!(
                "{} holds {} from an unfinished run: pass --resume (training.resume = true) to continue it, or remove it to start over",
                output_dir.display(),
                checkpoint.display()
            ),
        ));
    }
    std::fs::create_dir_all(&output_dir).map_err(|err| PipelineError::io(&output_dir, err))?;
    let config_copy = output_dir.join("config.toml");
    std::fs::write(&config_copy, config.to_toml_string())
        .map_err(|err| PipelineError::io(&config_copy, err))?;

    let learner_config = config.learner_config();
    let problems = tgrpo_learner::role::load_prompts(&learner_config)?;
    let spec = resolve_model(config)?;
    let policy = load_policy(config, &spec).await?;
    let learner = build_learner(config, &learner_config, &policy, &problems, "train").await?;
    let outcome = train_loop(config, policy, learner, problems, options).await;
    if metrics_path.exists() {
        write_training_report(config, &metrics_path, &report_path)?;
    }
    let (summary, summaries) = outcome?;
    report.wall_s = started.elapsed().as_secs_f64();
    report.workers = summaries;
    let interrupted = summary.reason == StopReason::Shutdown;
    report.summary = Some(summary);
    if interrupted {
        return Err(PipelineError::Cancelled { stage: "train" });
    }
    Ok(report)
}

/// The local training loop itself, for a learner built by the caller (a fresh adapter
/// from the config in [`train`]; a warm-started one in tests): the learner's
/// [`TrainingRun`] over `problems`, `local.rollout_workers` workers sampling with `policy`
/// (whose base weights the learner shares), scoring through `rollout.executor_endpoints`
/// or an in-process `[executor]` pool, adapters through the in-process broadcast. Writes
/// checkpoints and `metrics.jsonl` into `training.output_dir`; returns the learner's and
/// the workers' summaries once every epoch is trained, `max_steps` is reached, or
/// `options.cancel` fires.
pub async fn train_loop(
    config: &TgrpoConfig,
    policy: Policy,
    learner: Learner<LoraPolicy>,
    problems: Vec<Problem>,
    options: &StageOptions,
) -> Result<(RunSummary, Vec<WorkerSummary>)> {
    let run = timed_train_loop(config, policy, learner, problems, options).await?;
    Ok((run.summary, run.workers))
}

/// The learner for `policy` (its adapter initialised, its optimizer and checkpoint state
/// fresh or resumed): seconds of CPU work on a large model, so on a blocking thread.
/// `stage` names the caller in the error.
pub(crate) async fn build_learner(
    config: &TgrpoConfig,
    learner_config: &tgrpo_learner::LearnerConfig,
    policy: &Policy,
    problems: &[Problem],
    stage: &'static str,
) -> Result<Learner<LoraPolicy>> {
    let learner_config = learner_config.clone();
    let lora = config.lora.clone();
    let policy = policy.clone();
    let problems = problems.to_vec();
    tokio::task::spawn_blocking(move || {
        tgrpo_learner::role::build_learner(&learner_config, &lora, &policy, &problems)
    })
    .await
    .map_err(|join| PipelineError::stage(stage, format!("learner setup failed: {join}")))?
    .map_err(PipelineError::from)
}

/// What [`timed_train_loop`] returns: the summaries and how long training itself took.
#[derive(Debug, Clone)]
pub struct TimedLoop {
    /// The learner's summary.
    pub summary: RunSummary,
    /// Each rollout worker's summary.
    pub workers: Vec<WorkerSummary>,
    /// From the start of the learner's training run (workers already running, the
    /// executor pool warm) to its end, the final checkpoint and adapter included; without
    /// the setup before it and the workers' shutdown after it. What the loop benchmark
    /// divides by.
    pub training: Duration,
}

/// [`train_loop`], also timing the training run itself (see [`TimedLoop::training`]).
pub async fn timed_train_loop(
    config: &TgrpoConfig,
    policy: Policy,
    learner: Learner<LoraPolicy>,
    problems: Vec<Problem>,
    options: &StageOptions,
) -> Result<TimedLoop> {
    let metrics_path = config.training.output_dir.join("metrics.jsonl");
    let schedule_steps = learner.schedule_steps();
    tracing::info!(
        prompts = problems.len(),
        schedule_steps,
        adapter_parameters = learner.policy().adapter().adapter().num_parameters(),
        "learner ready"
    );
    let broadcast = Broadcast::local(&config.run_id, &config.broadcast)?;
    let publisher = broadcast.publisher().await?;
    let sink: Arc<dyn AdapterSink> = Arc::new(publisher);
    let run = TrainingRun::new(learner, problems, Some(sink))?;
    let coordinator = run.coordinator();

    let scorer = if config.rollout.executor_endpoints.is_empty() {
        Scorer::local(config.executor.clone()).await?
    } else {
        Scorer::remote(
            &config.rollout.executor_endpoints,
            config.rollout.executor_client.clone(),
        )?
    };
    let workers_stop = CancellationToken::new();
    let mut workers = Vec::new();
    for index in 0..config.local.rollout_workers {
        let sampler = Sampler::new(
            policy.clone(),
            scorer.clone(),
            config.rollout.sampler_config(),
        )?;
        let mut worker_options = WorkerOptions::from_config(&config.rollout);
        worker_options.worker_id = format!("local-{index}");
        let link: Arc<dyn LearnerLink> = Arc::new(CoordinatorLink::new(coordinator.clone()));
        let feed = AdapterFeed::subscriber(broadcast.subscribe(&workers_stop));
        let worker = RolloutWorker::new(worker_options, sampler, link, feed);
        workers.push(tokio::spawn(worker.run(workers_stop.clone())));
    }

    let bar = progress::bar("train", schedule_steps as u64, "steps", options.progress);
    let monitor = {
        let bar = bar.clone();
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            loop {
                let status = coordinator.status();
                bar.set_position(status.step);
                if let Some(line) = progress::last_json_line(&metrics_path) {
                    bar.set_message(step_message(&line));
                }
                if status.finished {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let training_started = Instant::now();
    let summary = run.train(options.cancel.child_token()).await;
    let training = training_started.elapsed();
    let _ = monitor.await;
    bar.finish_and_clear();
    // The coordinator now answers `finished`: workers leave on their next lease. Give
    // them a moment, then stop them (an abandoned lease costs nothing now).
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut summaries = Vec::new();
    for mut handle in workers {
        tokio::select! {
            joined = &mut handle => push_worker(&mut summaries, joined),
            () = &mut deadline => {
                workers_stop.cancel();
                push_worker(&mut summaries, handle.await);
            }
        }
    }
    workers_stop.cancel();
    Ok(TimedLoop {
        summary: summary?,
        workers: summaries,
        training,
    })
}

fn push_worker(
    summaries: &mut Vec<WorkerSummary>,
    joined: std::result::Result<tgrpo_rollout::Result<WorkerSummary>, tokio::task::JoinError>,
) {
    match joined {
        Ok(Ok(summary)) => summaries.push(summary),
        Ok(Err(err)) => tracing::error!(%err, "rollout worker failed"),
        Err(join) => tracing::error!(%join, "rollout worker task failed"),
    }
}

/// The progress bar's message for a metrics line: reward and loss terms.
fn step_message(line: &serde_json::Value) -> String {
    let field = |name: &str| line.get(name).and_then(serde_json::Value::as_f64);
    let mut parts = Vec::new();
    if let Some(reward) = field("reward_mean") {
        parts.push(format!("reward {reward:.2}"));
    }
    for (name, label) in [
        ("loss_grpo", "grpo"),
        ("loss_teacher_sft", "teacher"),
        ("loss_self_sft", "self"),
    ] {
        if let Some(value) = field(name) {
            parts.push(format!("{label} {value:.3}"));
        }
    }
    parts.join(" · ")
}

/// Draws `report.svg` from `metrics.jsonl`.
pub fn write_training_report(
    config: &TgrpoConfig,
    metrics: &std::path::Path,
    report: &std::path::Path,
) -> Result<()> {
    let panels = crate::report::training_panels(metrics)?;
    crate::report::write_svg(
        report,
        &format!("tgrpo train · run {}", config.run_id),
        &panels,
    )?;
    Ok(())
}
