//! Subcommand implementations: each module parses its own arguments and calls into the
//! library crate that owns the role.

pub mod bench;
pub mod bench_broadcast;
pub mod bench_executor;
pub mod bench_learner;
pub mod bench_sample;
pub mod check;
mod check_teacher;
pub mod config;
pub mod data;
pub mod eval;
pub mod executor;
pub mod launch;
pub mod learner;
pub mod local;
pub mod rollout;
mod run_config;
mod sandbox_args;
pub mod score;
pub mod synthesis;
mod teacher_args;
pub mod teacher_proxy;
pub mod train;

use crate::Command;

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Bench(command) => bench::run(command).await,
        Command::Executor(args) => executor::run(args).await,
        Command::Score(args) => score::run(args).await,
        Command::Check(command) => check::run(command).await,
        Command::Synthesis(args) => synthesis::run(args).await,
        Command::TeacherProxy(args) => teacher_proxy::run(args).await,
        Command::Rollout(args) => rollout::run(args).await,
        Command::Learner(args) => learner::run(args).await,
        Command::Launch(args) => launch::run(args).await,
        Command::Config(args) => config::run(args).await,
        Command::Data(args) => data::run(args).await,
        Command::Train(args) => train::run(args).await,
        Command::Eval(args) => eval::run(args).await,
        Command::All(args) => local::run_all(args).await,
        Command::Local(args) => local::run_local(args).await,
    }
}
