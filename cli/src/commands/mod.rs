//! Subcommand implementations: each module parses its own arguments and calls into the
//! library crate that owns the role.

pub mod bench;
pub mod bench_broadcast;
pub mod bench_executor;
pub mod executor;
mod sandbox_args;
pub mod score;

use crate::Command;

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Bench(command) => bench::run(command).await,
        Command::Executor(args) => executor::run(args).await,
        Command::Score(args) => score::run(args).await,
    }
}
