//! `tgrpo synthesis`: the synthesis stage. Asks the teacher for N samples per training
//! problem, verifies each trace's code with the executor, and appends the records to the
//! traces file; a rerun only asks for what is missing, and answers already paid for come
//! from the response cache.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tgrpo_dataset::Problem;
use tgrpo_executor::{ClientConfig, Scorer};
use tgrpo_teacher::{TraceSource, Unverified, synthesize};

use super::sandbox_args::SandboxArgs;
use super::teacher_args::TeacherArgs;

/// How the problems file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProblemsFormat {
    /// MBPP rows (`task_id`, `text`, `code`, `test_list`, ...), full or sanitized.
    Mbpp,
    /// openai/human-eval rows.
    Humaneval,
    /// tgrpo's own Problem records (`tgrpo_dataset::Problem` as JSON lines).
    Problems,
}

/// The `--problems` default (with `--config`, only another value overrides the file).
const DEFAULT_PROBLEMS: &str = "data/mbpp_train.jsonl";

/// Arguments of `tgrpo synthesis`.
#[derive(Debug, Args)]
pub struct SynthesisArgs {
    /// The run config: one TOML file with every section (what every stage reads;
    /// `TGRPO_SECTION__KEY` variables override it). Synthesis then asks `[synthesis]`'s
    /// teacher about the data stage's training problems (`learner.prompts_path`) and
    /// writes `teacher.traces_path`; the flags below override it.
    #[arg(
        long = "config",
        env = "TGRPO_CONFIG",
        conflicts_with = "teacher_config"
    )]
    pub run_config: Option<PathBuf>,

    /// The training problems.
    #[arg(
        long,
        env = "TGRPO_SYNTHESIS_PROBLEMS",
        default_value = DEFAULT_PROBLEMS
    )]
    pub problems: PathBuf,

    /// Format of the problems file.
    #[arg(
        long,
        env = "TGRPO_SYNTHESIS_PROBLEMS_FORMAT",
        value_enum,
        default_value = "mbpp"
    )]
    pub problems_format: ProblemsFormat,

    /// Only the first N problems (0 = all).
    #[arg(long, env = "TGRPO_SYNTHESIS_LIMIT", default_value_t = 0)]
    pub limit: usize,

    /// Samples per problem [default: the config's num_samples_per_problem, 8].
    #[arg(long, env = "TGRPO_SYNTHESIS_SAMPLES")]
    pub samples: Option<u32>,

    /// The traces file (appended to; resumes) [default: the config's traces_path,
    /// data/synthetic_traces.jsonl].
    #[arg(long, env = "TGRPO_SYNTHESIS_OUT")]
    pub out: Option<PathBuf>,

    /// Remote executors (`host:port`, comma-separated) to verify with; without it, an
    /// in-process sandbox pool (see the sandbox flags).
    #[arg(long, env = "TGRPO_EXECUTOR_ENDPOINTS", value_delimiter = ',')]
    pub executor_endpoints: Vec<String>,

    /// Record traces without running their code (verdict `unverified`, never passing).
    #[arg(long, env = "TGRPO_SYNTHESIS_NO_VERIFY")]
    pub no_verify: bool,

    /// No progress bar (logs only).
    #[arg(long, env = "TGRPO_NO_PROGRESS")]
    pub no_progress: bool,

    #[command(flatten)]
    pub teacher: TeacherArgs,

    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Loads the problems a stage works on.
pub fn load_problems(path: &PathBuf, format: ProblemsFormat) -> anyhow::Result<Vec<Problem>> {
    let problems = match format {
        ProblemsFormat::Mbpp => tgrpo_dataset::mbpp::load_jsonl(path)?,
        ProblemsFormat::Humaneval => tgrpo_dataset::humaneval::load_jsonl(path)?,
        ProblemsFormat::Problems => tgrpo_dataset::jsonl::read(path)?,
    };
    anyhow::ensure!(!problems.is_empty(), "{} holds no problems", path.display());
    Ok(problems)
}

/// Runs the stage and prints its summary; fails when it was cancelled or some sample
/// failed (rerunning resumes).
pub async fn run(args: SynthesisArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.run_config {
        return run_with_config(&args, path).await;
    }
    let mut config = args.teacher.to_config()?;
    if let Some(samples) = args.samples {
        config.num_samples_per_problem = samples;
    }
    if let Some(out) = &args.out {
        config.traces_path.clone_from(out);
    }
    config.validate()?;
    let mut problems = load_problems(&args.problems, args.problems_format)
        .with_context(|| format!("loading problems from {}", args.problems.display()))?;
    if args.limit > 0 {
        problems.truncate(args.limit);
    }
    let teacher = args.teacher.teacher(&config)?;
    let cancel = crate::shutdown::on_signal();
    let progress = !args.no_progress;
    let summary = if args.no_verify {
        let source = TraceSource::new(&config, teacher, Unverified)?;
        let samples = config.num_samples_per_problem;
        synthesize(
            &source,
            &problems,
            samples,
            &config.traces_path,
            progress,
            &cancel,
        )
        .await?
    } else {
        let scorer = if args.executor_endpoints.is_empty() {
            Scorer::local(args.sandbox.to_config()).await?
        } else {
            Scorer::remote(&args.executor_endpoints, ClientConfig::default())?
        };
        let source = TraceSource::new(&config, teacher, scorer)?;
        let samples = config.num_samples_per_problem;
        synthesize(
            &source,
            &problems,
            samples,
            &config.traces_path,
            progress,
            &cancel,
        )
        .await?
    };
    println!("{summary}");
    println!("traces: {}", config.traces_path.display());
    for failure in summary.failures.iter().take(10) {
        println!("failed: {}", failure.error);
    }
    if summary.failures.len() > 10 {
        println!("failed: … and {} more", summary.failures.len() - 10);
    }
    if summary.cancelled {
        anyhow::bail!("synthesis cancelled; rerun to resume");
    }
    anyhow::ensure!(
        summary.failures.is_empty(),
        "{} samples failed; rerun to retry them (answers already received are cached)",
        summary.failures.len()
    );
    Ok(())
}

/// `tgrpo synthesis --config FILE`: the pipeline's synthesis stage on the run config, with
/// the flags given applied on top.
async fn run_with_config(args: &SynthesisArgs, path: &std::path::Path) -> anyhow::Result<()> {
    use tgrpo_pipeline::config::TeacherKind;

    let mut run = super::run_config::load_run_config(path)?;
    run.teacher = args.teacher.to_config_over(run.teacher.clone())?;
    if args.problems != std::path::Path::new(DEFAULT_PROBLEMS) {
        run.learner.prompts_path.clone_from(&args.problems);
    }
    run.learner.prompts_format = match args.problems_format {
        ProblemsFormat::Mbpp => run.learner.prompts_format,
        ProblemsFormat::Humaneval => tgrpo_learner::PromptsFormat::Humaneval,
        ProblemsFormat::Problems => tgrpo_learner::PromptsFormat::Problems,
    };
    if args.limit > 0 {
        run.synthesis.limit = args.limit;
    }
    if let Some(samples) = args.samples {
        run.teacher.num_samples_per_problem = samples;
    }
    if let Some(out) = &args.out {
        run.teacher.traces_path.clone_from(out);
    }
    if !args.executor_endpoints.is_empty() {
        run.rollout
            .executor_endpoints
            .clone_from(&args.executor_endpoints);
    }
    if args.no_verify {
        run.synthesis.verify = false;
    }
    if let Some(model) = &args.teacher.local_model {
        run.synthesis.teacher = TeacherKind::Local;
        run.synthesis.local_model = Some(model.clone());
    }
    run.executor = args.sandbox.over(run.executor.clone());
    run.validate()?;
    let options = tgrpo_pipeline::train::StageOptions {
        progress: !args.no_progress,
        cancel: crate::shutdown::on_signal(),
    };
    let report =
        tgrpo_pipeline::synthesis::synthesize_traces(&run, TeacherArgs::api_key(), &options)
            .await?;
    println!("{}", report.summary);
    println!(
        "traces: {} ({} of {} training problems asked of {})",
        run.teacher.traces_path.display(),
        report.problems,
        report.training_problems,
        report.teacher
    );
    Ok(())
}
