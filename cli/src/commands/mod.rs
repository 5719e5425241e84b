//! Subcommand implementations: each module parses its own arguments and calls into the
//! library crate that owns the role.

pub mod bench;
pub mod bench_broadcast;
pub mod bench_executor;
pub mod bench_learner;
pub mod check;
mod check_teacher;
pub mod executor;
pub mod learner;
pub mod rollout;
mod sandbox_args;
pub mod score;
pub mod synthesis;
mod teacher_args;
pub mod teacher_proxy;

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
    }
}
