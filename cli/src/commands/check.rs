//! `tgrpo check executor|model|lora|teacher|nats|all`: quick self-tests of one component
//! each against the run config's endpoints (or the ones the flags name). Every check
//! prints one `PASS name: detail` or `FAIL name: what happened — fix: what to try` line;
//! the command exits non-zero when any check failed. The checks live in
//! `tgrpo_launcher::checks` (the teacher's in `check_teacher`).

use clap::{Args, Subcommand};
use tgrpo_launcher::checks::{self, CheckResult, CheckTargets};
use tgrpo_pipeline::config::TeacherKind;
use tgrpo_pipeline::config::{Override, TgrpoConfig};

use super::check_teacher;
use super::run_config::ConfigArgs;
use super::teacher_args::TeacherArgs;

/// What to check.
#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Executors: a passing and a failing program scored on each configured endpoint
    /// ([rollout] executor_endpoints or --executor), or in an in-process sandbox pool
    /// (with its isolation self-check) when none is configured.
    Executor(CheckArgs),
    /// The model: load [model] source, tokenizer round trip, chat template, a short
    /// greedy generation.
    Model(CheckArgs),
    /// LoRA on the model: gradients reach every adapter tensor, one step lowers the loss,
    /// a PEFT save/load round trip scores identically.
    Lora(CheckArgs),
    /// The teacher: reachable, serving the model, thinking, answering with code.
    Teacher(check_teacher::CheckTeacherArgs),
    /// NATS: connects, JetStream enabled, an object-store put/get round trip.
    Nats(CheckArgs),
    /// Every check above (the teacher's only when synthesis uses the HTTP teacher or
    /// --teacher-url is given).
    All(CheckAllArgs),
}

/// Flags of the component checks: the run config and the endpoints to check instead of
/// the config's.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// An executor to check (`host:port`, repeatable) instead of [rollout]
    /// executor_endpoints.
    #[arg(long = "executor", value_name = "HOST:PORT")]
    pub executors: Vec<String>,

    /// The NATS server to check instead of [broadcast] url.
    #[arg(long, env = "TGRPO_NATS_URL")]
    pub nats_url: Option<String>,

    /// The model to check instead of [model] source (HF directory, .gguf file or hub id).
    #[arg(long)]
    pub model: Option<String>,
}

impl CheckArgs {
    fn load(&self) -> anyhow::Result<(TgrpoConfig, CheckTargets)> {
        let mut extra = Vec::new();
        if let Some(model) = &self.model {
            extra.push(Override::new("model.source", model, "--model"));
        }
        let config = self.config.load(&TgrpoConfig::default(), extra)?;
        let targets = CheckTargets {
            executors: self.executors.clone(),
            nats_url: self.nats_url.clone(),
        };
        Ok((config, targets))
    }
}

/// Flags of `tgrpo check all`.
#[derive(Debug, Args)]
pub struct CheckAllArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    #[command(flatten)]
    pub teacher: TeacherArgs,
}

/// Runs the chosen checks, prints one line each, and fails when any failed.
pub async fn run(command: CheckCommand) -> anyhow::Result<()> {
    let results = match command {
        CheckCommand::Teacher(args) => vec![check_teacher::run(args).await?],
        CheckCommand::Executor(args) => {
            let (config, targets) = args.load()?;
            checks::check_executors(&targets.executor_endpoints(&config), &config.executor).await
        }
        CheckCommand::Model(args) => {
            let (config, _) = args.load()?;
            vec![checks::check_model(&config).await]
        }
        CheckCommand::Lora(args) => {
            let (config, _) = args.load()?;
            vec![checks::check_lora(&config).await]
        }
        CheckCommand::Nats(args) => {
            let (config, targets) = args.load()?;
            vec![
                checks::check_nats(&targets.nats_url(&config), checks::nats_timeout(&config)).await,
            ]
        }
        CheckCommand::All(args) => {
            let (config, targets) = args.check.load()?;
            let mut results = Vec::new();
            for result in checks::check_all(&config, &targets).await {
                println!("{result}");
                results.push(result);
            }
            let teacher =
                if config.synthesis.teacher == TeacherKind::Http || args.teacher.url.is_some() {
                    let teacher_config = args.teacher.to_config_over(config.teacher.clone())?;
                    check_teacher::check(teacher_config).await
                } else {
                    CheckResult::skip(
                        "teacher",
                        format!(
                            "[synthesis] teacher = \"{}\" does not use the HTTP teacher (give \
                         --teacher-url, or run `tgrpo check teacher`, to check one anyway)",
                            teacher_kind_name(config.synthesis.teacher)
                        ),
                    )
                };
            println!("{teacher}");
            results.push(teacher);
            return summarize(&results);
        }
    };
    for result in &results {
        println!("{result}");
    }
    summarize(&results)
}

fn teacher_kind_name(kind: TeacherKind) -> &'static str {
    match kind {
        TeacherKind::Http => "http",
        TeacherKind::Local => "local",
        TeacherKind::Reference => "reference",
    }
}

fn summarize(results: &[CheckResult]) -> anyhow::Result<()> {
    let failed = results.iter().filter(|result| result.failed()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} check(s) failed", results.len());
    }
    Ok(())
}
