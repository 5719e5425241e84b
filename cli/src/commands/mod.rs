//! Subcommand implementations: each module parses its own arguments and calls into the
//! library crate that owns the role.

use crate::Command;

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {}
}
