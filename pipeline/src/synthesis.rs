//! The synthesis stage in the stage flow: the teacher-proxy crate's [`synthesize`] over
//! the data stage's training problems, with the teacher `[synthesis] teacher` picks.
//!
//! Nothing of synthesis itself lives here (prompting, caching, `<think>` parsing,
//! verification, the resumable traces file are the teacher crate's); this module only
//! chooses the teacher and the verifier from the run config:
//!
//! - `http`: the OpenAI-compatible server at `teacher.api_url` (Qwen3-32B behind vLLM);
//! - `local`: a policy-crate model in this process (`synthesis.local_model`);
//! - `reference`: [`ReferenceTeacher`], which answers with the problems' own reference
//!   solutions — the CPU demo's stand-in for the 32B teacher.
//!
//! Verification scores each trace with the executor: `rollout.executor_endpoints` when set,
//! else an in-process sandbox pool configured by `[executor]`.

use tgrpo_executor::Scorer;
use tgrpo_teacher::client::{Teacher, TeacherReply};
use tgrpo_teacher::wire::ChatRequest;
use tgrpo_teacher::{
    AnyTeacher, HttpTeacher, LocalTeacher, ReferenceTeacher, SynthesisSummary, TraceSource,
    Unverified, synthesize,
};

use crate::config::{TeacherKind, TgrpoConfig};
use crate::error::{PipelineError, Result};
use crate::train::StageOptions;

/// The teacher a run config picks.
#[derive(Debug, Clone)]
pub enum StageTeacher {
    /// HTTP or a local model.
    Any(AnyTeacher),
    /// The reference (oracle) teacher.
    Reference(ReferenceTeacher),
}

impl Teacher for StageTeacher {
    fn describe(&self) -> String {
        match self {
            StageTeacher::Any(teacher) => teacher.describe(),
            StageTeacher::Reference(teacher) => teacher.describe(),
        }
    }

    async fn chat(&self, request: &ChatRequest) -> tgrpo_teacher::Result<TeacherReply> {
        match self {
            StageTeacher::Any(teacher) => teacher.chat(request).await,
            StageTeacher::Reference(teacher) => teacher.chat(request).await,
        }
    }
}

/// What the synthesis stage did.
#[derive(Debug, Clone)]
pub struct SynthesisReport {
    /// The teacher crate's summary.
    pub summary: SynthesisSummary,
    /// Who answered.
    pub teacher: String,
    /// Problems asked about (after `synthesis.limit`) out of the training problems.
    pub problems: usize,
    /// Training problems.
    pub training_problems: usize,
}

/// The teacher of `config` for `problems` (the reference teacher knows only these).
/// `api_key` is the HTTP teacher's key (from the environment, by the caller).
pub fn stage_teacher(
    config: &TgrpoConfig,
    problems: &[tgrpo_dataset::Problem],
    api_key: Option<String>,
) -> Result<StageTeacher> {
    Ok(match config.synthesis.teacher {
        TeacherKind::Http => StageTeacher::Any(AnyTeacher::Http(HttpTeacher::new(
            &config.teacher,
            api_key,
        )?)),
        TeacherKind::Local => {
            let spec = config
                .synthesis
                .local_model
                .as_deref()
                .expect("validate() requires synthesis.local_model");
            StageTeacher::Any(AnyTeacher::Local(LocalTeacher::load(
                spec,
                config.teacher.model_name.clone(),
                1,
            )?))
        }
        TeacherKind::Reference => StageTeacher::Reference(ReferenceTeacher::new(
            problems,
            format!(
                "reference-solutions (stand-in for {})",
                config.teacher.model_name
            ),
        )),
    })
}

/// Runs the synthesis stage over the training problems (`learner.prompts_path`). Fails
/// when it was interrupted or some sample failed (a rerun resumes and retries them).
pub async fn synthesize_traces(
    config: &TgrpoConfig,
    api_key: Option<String>,
    options: &StageOptions,
) -> Result<SynthesisReport> {
    config.validate()?;
    let learner_config = config.learner_config();
    let mut problems = tgrpo_learner::role::load_prompts(&learner_config)?;
    let training_problems = problems.len();
    if config.synthesis.limit > 0 {
        problems.truncate(config.synthesis.limit);
    }
    let teacher = stage_teacher(config, &problems, api_key)?;
    let teacher_name = teacher.describe();
    let samples = config.teacher.num_samples_per_problem;
    let path = &config.teacher.traces_path;
    let summary = if config.synthesis.verify {
        let scorer = if config.rollout.executor_endpoints.is_empty() {
            Scorer::local(config.executor.clone()).await?
        } else {
            Scorer::remote(
                &config.rollout.executor_endpoints,
                config.rollout.executor_client.clone(),
            )?
        };
        let source = TraceSource::new(&config.teacher, teacher, scorer)?;
        synthesize(
            &source,
            &problems,
            samples,
            path,
            options.progress,
            &options.cancel,
        )
        .await?
    } else {
        let source = TraceSource::new(&config.teacher, teacher, Unverified)?;
        synthesize(
            &source,
            &problems,
            samples,
            path,
            options.progress,
            &options.cancel,
        )
        .await?
    };
    if summary.cancelled {
        return Err(PipelineError::Cancelled { stage: "synthesis" });
    }
    if !summary.failures.is_empty() {
        let first = &summary.failures[0].error;
        return Err(PipelineError::stage(
            "synthesis",
            format!(
                "{} samples failed (first: {first}); rerun to retry them (answers already received are cached)",
                summary.failures.len()
            ),
        ));
    }
    Ok(SynthesisReport {
        summary,
        teacher: teacher_name,
        problems: problems.len(),
        training_problems,
    })
}
