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

/// Arguments of `tgrpo synthesis`.
#[derive(Debug, Args)]
pub struct SynthesisArgs {
    /// The training problems.
    #[arg(
        long,
        env = "TGRPO_SYNTHESIS_PROBLEMS",
        default_value = "data/mbpp_train.jsonl"
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
