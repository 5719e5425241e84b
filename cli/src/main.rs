//! `tgrpo`: the single binary of the system.
//!
//! Every role (executor, teacher proxy, rollout worker, learner) and every pipeline stage
//! (data, synthesis, train, eval) is a subcommand. This file only parses arguments, sets
//! up logging and dispatches; the work lives in the library crates, one per service.

#![forbid(unsafe_code)]

mod commands;
mod logging;
mod shutdown;

use clap::{Parser, Subcommand};

/// Teacher-guided GRPO for code-generation models.
#[derive(Debug, Parser)]
#[command(name = "tgrpo", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    logging: logging::LoggingArgs,

    /// Serve this process's Prometheus metrics at http://ADDR/metrics (any role; the
    /// series are `tgrpo_executor_*`, `tgrpo_learner_*`, `tgrpo_rollout_*`,
    /// `tgrpo_teacher_*`).
    #[arg(long, global = true, env = "TGRPO_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,

    #[command(subcommand)]
    command: Command,
}

/// One subcommand per role and per pipeline stage.
#[derive(Debug, Subcommand)]
enum Command {
    /// Performance benchmarks (`tgrpo bench broadcast`, ...).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Serve sandboxed scoring of untrusted code over gRPC (an executor worker).
    Executor(commands::executor::ExecutorArgs),
    /// Score a JSONL file of programs against their tests.
    Score(commands::score::ScoreArgs),
    /// Quick self-tests, one PASS/FAIL line each: executor, model, lora, teacher, nats, all.
    #[command(subcommand)]
    Check(commands::check::CheckCommand),
    /// The synthesis stage: verified teacher traces for the training problems (resumes).
    Synthesis(commands::synthesis::SynthesisArgs),
    /// Serve on-line teacher traces over gRPC: the one place that meters the teacher.
    TeacherProxy(commands::teacher_proxy::TeacherProxyArgs),
    /// A rollout worker: sample scored groups for the learner with the newest adapter.
    Rollout(commands::rollout::RolloutArgs),
    /// The learner: train the LoRA adapter on scored groups, teacher traces and the
    /// policy's best samples; serve prompts; publish adapters.
    Learner(commands::learner::LearnerArgs),
    /// Distributed mode on one host: a nats-server, executors, the teacher proxy, the
    /// learner and rollout workers as separate supervised processes from one config.
    Launch(commands::launch::LaunchArgs),
    /// Print the effective run config (file, TGRPO_SECTION__KEY variables, --set) as TOML.
    Config(commands::config::ConfigCommandArgs),
    /// The data stage: MBPP into data/mbpp_{train,validation,test}.jsonl (resumes).
    Data(commands::data::DataArgs),
    /// The train stage in local mode: learner, rollout workers, executors in one process.
    Train(commands::train::TrainArgs),
    /// The eval stage: n samples per problem, unbiased pass@k (base model or + adapter).
    Eval(commands::eval::EvalArgs),
    /// data, synthesis, train and eval in order (each resumes).
    All(commands::local::AllArgs),
    /// The demo (no --config): the whole pipeline on a tiny built-in model and problem
    /// set, on CPU, in minutes; with --config, that run in local mode. Prints pass@k
    /// before and after training.
    Local(commands::local::LocalArgs),
}

impl Command {
    /// The log level when neither --log-level nor TGRPO_LOG says: the demo keeps its
    /// output readable, the roles and stages log their progress.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Local(_) => "warn",
            _ => "info",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(&cli.logging, cli.command.default_log_level())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Serves on its own task for as long as the runtime runs (the whole command).
        let _metrics = match cli.metrics_listen {
            Some(address) => Some(
                tgrpo_launcher::metrics_endpoint::serve(
                    address,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await?,
            ),
            None => None,
        };
        commands::run(cli.command).await
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command's arguments (unique ids, valid conflicts) only when that
    /// command is parsed; this checks every subcommand at once, so a clash between two
    /// flattened argument groups fails here instead of at a user's first call.
    #[test]
    fn every_subcommand_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
