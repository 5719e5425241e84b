//! tgrpo-rollout: rollout workers, and the sampling-and-scoring core they share with the
//! eval stage.
//!
//! A rollout worker leases prompts from the learner, samples G completions per prompt with
//! the newest adapter it holds, scores them with executors, and streams the scored groups
//! (tokens, behaviour log-probs, rewards, adapter version) back. It picks up new adapters
//! between batches and rides out a learner, executor or NATS server that is away, with
//! exponential backoff and jitter, without losing a sampled group.
//!
//! # Layout
//! - [`sampling`]: the core — [`Sampler::run`]: problems → prompts (the model's chat
//!   template) → seeded, batched generation on a blocking thread → code extraction →
//!   concurrent scoring → per completion tokens, text, log-probs, code, verdict, reward.
//!   The eval stage and local mode call it directly.
//! - [`worker`]: [`RolloutWorker`], the lease → sample → submit loop.
//! - [`learner`]: [`LearnerLink`] (the two learner calls) and [`GrpcLearner`].
//! - [`adapters`]: [`AdapterFeed`] (a broadcast subscriber, possibly still connecting) and
//!   [`AdapterInstaller`] (parse against the model, swap atomically, keep the old one on
//!   failure).
//! - [`config`]: [`RolloutConfig`], the `[rollout]` section.
//! - [`backoff`]: [`Backoff`], exponential with jitter.
//! - [`metrics`]: the `tgrpo_rollout_*` Prometheus series (groups, tokens, adapter
//!   version, executor and learner errors).
//! - `testing` (feature `testing`): a tiny model that answers with a chosen program.
//!
//! # Running a worker in-process
//! ```no_run
//! # async fn demo(policy: tgrpo_policy::Policy, scorer: tgrpo_executor::Scorer,
//! #               subscriber: tgrpo_broadcast::AdapterSubscriber) -> tgrpo_rollout::Result<()> {
//! use std::sync::Arc;
//! use tgrpo_rollout::{AdapterFeed, GrpcLearner, RolloutConfig, RolloutWorker, Sampler, WorkerOptions};
//!
//! let config = RolloutConfig { learner_endpoint: "127.0.0.1:50052".into(), ..Default::default() };
//! let sampler = Sampler::new(policy, scorer, config.sampler_config())?;
//! let learner = Arc::new(GrpcLearner::connect_lazy(&config.learner_endpoint, config.learner_timeouts())?);
//! let worker = RolloutWorker::new(WorkerOptions::from_config(&config), sampler, learner,
//!                                 AdapterFeed::subscriber(subscriber));
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let summary = worker.run(shutdown).await?;
//! println!("{:?}: {} groups accepted", summary.exit, summary.stats.accepted);
//! # Ok(()) }
//! ```
//!
//! # Sampling and scoring for eval
//! ```no_run
//! # async fn demo(policy: tgrpo_policy::Policy, scorer: tgrpo_executor::Scorer,
//! #               problems: Vec<tgrpo_dataset::Problem>) -> tgrpo_rollout::Result<()> {
//! use tgrpo_rollout::{SampleTask, Sampler, SamplerConfig, SamplingSettings};
//!
//! let sampler = Sampler::new(policy, scorer, SamplerConfig::default())?;
//! let tasks = problems.into_iter().map(|p| SampleTask { key: p.task_id.clone(), problem: p }).collect();
//! let settings = SamplingSettings { num_samples: 5, temperature: 0.8, top_p: 1.0, top_k: 0,
//!                                   max_new_tokens: 512, stop: Vec::new(), seed: 0 };
//! let batch = sampler.run(tasks, &settings, &tokio_util::sync::CancellationToken::new()).await?;
//! for task in &batch.tasks {
//!     let correct = task.samples.iter().filter(|s| s.passed()).count();
//!     println!("{}: {correct}/{}", task.task_id, task.samples.len());
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod adapters;
pub mod backoff;
pub mod config;
pub mod error;
pub mod learner;
pub mod metrics;
pub mod sampling;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

use std::sync::Arc;

use tgrpo_broadcast::BroadcastConfig;
use tgrpo_executor::{ExecutorConfig, Scorer};
use tgrpo_policy::Policy;
use tokio_util::sync::CancellationToken;

pub use adapters::{AdapterFeed, AdapterInstaller, InstallOutcome};
pub use backoff::{Backoff, BackoffConfig};
pub use config::RolloutConfig;
pub use error::{Result, RolloutError};
pub use learner::{GrpcLearner, LearnerLink, LearnerTimeouts};
pub use sampling::{
    BatchStats, RewardKind, SampleTask, SampledBatch, Sampler, SamplerConfig, SamplingSettings,
    ScoredSample, ScoringConfig, TaskSamples, no_code_reward, sample_seed, score_request,
};
pub use worker::{RolloutWorker, WorkerExit, WorkerOptions, WorkerStats, WorkerSummary};

/// Runs a rollout worker as `tgrpo rollout` does: loads the model, starts the scorer
/// (remote executors, or an in-process pool with `local_executor` when `config` names
/// none), follows the adapter broadcast on NATS when `broadcast` is given (connecting in
/// the background, with backoff, if NATS is away), and works until the learner says the
/// run is finished or `shutdown` fires.
pub async fn run(
    config: &RolloutConfig,
    local_executor: &ExecutorConfig,
    broadcast: Option<&BroadcastConfig>,
    shutdown: CancellationToken,
) -> Result<WorkerSummary> {
    config.validate()?;
    if let Some(broadcast) = broadcast {
        broadcast.validate()?;
    }
    let options = config.load_options()?;
    let source = config.model_source();
    let model = config.model.clone();
    let started = std::time::Instant::now();
    let policy = tokio::task::spawn_blocking(move || Policy::load(&source, &options))
        .await
        .map_err(|join| RolloutError::GenerationThread(join.to_string()))?
        .map_err(|source| RolloutError::policy(format!("loading the model {model}"), source))?;
    tracing::info!(model = %config.model, device = %config.device, seconds = started.elapsed().as_secs_f64(), "model loaded");
    let scorer = if config.executor_endpoints.is_empty() {
        local_executor
            .validate()
            .map_err(|err| RolloutError::config("executor", err.to_string()))?;
        Scorer::local(local_executor.clone()).await?
    } else {
        Scorer::remote(&config.executor_endpoints, config.executor_client.clone())?
    };
    let sampler = Sampler::new(policy, scorer, config.sampler_config())?;
    let learner = Arc::new(GrpcLearner::connect_lazy(
        &config.learner_endpoint,
        config.learner_timeouts(),
    )?);
    let feed = match broadcast {
        Some(broadcast) => AdapterFeed::connect_nats(
            config.run_id.clone(),
            broadcast.clone(),
            config.backoff.clone(),
            &shutdown,
        ),
        None => {
            tracing::warn!("no adapter broadcast configured: sampling with the base model only");
            AdapterFeed::None
        }
    };
    let worker = RolloutWorker::new(WorkerOptions::from_config(config), sampler, learner, feed);
    worker.run(shutdown).await
}
