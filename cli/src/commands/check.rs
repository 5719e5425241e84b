//! `tgrpo check ...`: connectivity and format checks of external dependencies.

use clap::Subcommand;

use super::check_teacher;

/// What to check.
#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// The teacher: reachable, serving the model, thinking, answering with code.
    Teacher(check_teacher::CheckTeacherArgs),
}

/// Runs the chosen check.
pub async fn run(command: CheckCommand) -> anyhow::Result<()> {
    match command {
        CheckCommand::Teacher(args) => check_teacher::run(args).await,
    }
}
