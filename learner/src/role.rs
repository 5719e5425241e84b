//! The `tgrpo learner` role from its config: load the prompt set, the base model and the
//! teacher traces, build the learner, connect the adapter broadcast, and serve.
//!
//! Local mode assembles the same parts itself (with the in-process broadcast and the
//! coordinator called directly); [`load_prompts`] and [`build_learner`] are the shared
//! pieces.

use std::sync::Arc;

use tgrpo_broadcast::{Broadcast, BroadcastConfig};
use tgrpo_dataset::Problem;
use tgrpo_policy::{LoadOptions, LoraConfig, ModelSource, Policy};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{LearnerConfig, PromptsFormat, open_device, parse_dtype};
use crate::error::{LearnerError, Result};
use crate::policy::{LoraPolicy, policy_error};
use crate::service::{AdapterSink, RunSummary, TrainingRun};
use crate::teacher::teacher_examples;
use crate::trainer::{Learner, schedule_length};

/// Reads the prompt set named by `[learner] prompts_path` / `prompts_format`.
pub fn load_prompts(config: &LearnerConfig) -> Result<Vec<Problem>> {
    let path = &config.learner.prompts_path;
    let problems = match config.learner.prompts_format {
        PromptsFormat::Mbpp => tgrpo_dataset::mbpp::load_jsonl(path),
        PromptsFormat::Humaneval => tgrpo_dataset::humaneval::load_jsonl(path),
        PromptsFormat::Problems => tgrpo_dataset::jsonl::read(path),
    }
    .map_err(|err| LearnerError::config("learner.prompts_path", err.to_string()))?;
    if problems.is_empty() {
        return Err(LearnerError::config(
            "learner.prompts_path",
            format!("{} holds no problems", path.display()),
        ));
    }
    Ok(problems)
}

/// Loads the base model named by `[learner] model` on `[learner] device`.
pub fn load_policy(config: &LearnerConfig) -> Result<Policy> {
    let device = open_device(&config.learner.device)?;
    let dtype = parse_dtype(&config.learner.dtype, device.is_cpu())?;
    let source = ModelSource::parse(&config.learner.model);
    Policy::load(&source, &LoadOptions { device, dtype }).map_err(policy_error)
}

/// The learner for `policy` (model, tokenizer, chat template) and the prompt set: a fresh
/// adapter, the teacher traces of `[dual_source]` tokenised for SFT (when β > 0), and the
/// learning-rate schedule sized to the run.
pub fn build_learner(
    config: &LearnerConfig,
    lora: &LoraConfig,
    policy: &Policy,
    problems: &[Problem],
) -> Result<Learner<LoraPolicy>> {
    let dual = &config.dual_source;
    let examples = if dual.beta > 0.0 {
        let path = &dual.teacher_traces_path;
        let traces = tgrpo_teacher::load_traces(path, dual.passing_only).map_err(|err| {
            LearnerError::config(
                "dual_source.teacher_traces_path",
                format!("{err} (run the synthesis stage first, or set dual_source.beta = 0)"),
            )
        })?;
        let built = teacher_examples(&traces, problems, policy, dual.use_teacher_thinking)?;
        tracing::info!(
            path = %path.display(),
            traces = traces.len(),
            examples = built.examples.len(),
            unknown_problem = built.unknown_problem,
            empty_target = built.empty_target,
            "teacher traces loaded"
        );
        if built.examples.is_empty() {
            tracing::warn!(path = %path.display(), "no usable teacher trace: the teacher-SFT term stays empty");
        }
        built.examples
    } else {
        Vec::new()
    };
    let trainable = LoraPolicy::new(
        policy.model().clone(),
        lora,
        config.training.seed,
        policy.base_model_name(),
    )?;
    Learner::new(
        trainable,
        config.clone(),
        examples,
        schedule_length(config, problems.len()),
    )
}

/// Runs the learner role: builds everything from `config`, publishes adapters through the
/// NATS broadcast (`broadcast: None` publishes nowhere: rollout workers then sample with
/// the base model), serves the gRPC API on `listener` until training ends or `shutdown`.
pub async fn run(
    config: &LearnerConfig,
    lora: &LoraConfig,
    broadcast: Option<&BroadcastConfig>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<RunSummary> {
    config.validate()?;
    lora.validate()
        .map_err(|err| LearnerError::config("lora", err.to_string()))?;
    let problems = load_prompts(config)?;
    let build_config = config.clone();
    let lora_config = lora.clone();
    let (learner, problems) = tokio::task::spawn_blocking(move || {
        let policy = load_policy(&build_config)?;
        let learner = build_learner(&build_config, &lora_config, &policy, &problems)?;
        Ok::<_, LearnerError>((learner, problems))
    })
    .await
    .map_err(|join| LearnerError::Policy(format!("model loading failed: {join}")))??;
    let sink: Option<Arc<dyn AdapterSink>> = match broadcast {
        Some(broadcast_config) => {
            let broadcast = Broadcast::connect_nats(&config.learner.run_id, broadcast_config)
                .await
                .map_err(|err| LearnerError::Broadcast {
                    version: 0,
                    reason: format!("connecting to {}: {err}", broadcast_config.url),
                })?;
            let publisher = broadcast
                .publisher()
                .await
                .map_err(|err| LearnerError::Broadcast {
                    version: 0,
                    reason: err.to_string(),
                })?;
            Some(Arc::new(publisher))
        }
        None => {
            tracing::warn!("no adapter broadcast: rollout workers will not see new adapters");
            None
        }
    };
    tracing::info!(
        prompts = problems.len(),
        schedule_steps = learner.schedule_steps(),
        adapter_parameters = learner.policy().adapter().adapter().num_parameters(),
        "learner ready"
    );
    TrainingRun::new(learner, problems, sink)?
        .serve(listener, shutdown)
        .await
}
