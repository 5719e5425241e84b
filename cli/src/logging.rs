//! Logging set-up, done once for every subcommand: `tracing` to stderr, pretty for
//! people or JSON for log collectors, filtered by `--log-level` / `RUST_LOG`.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors in a cluster.
    Json,
}

/// Logging flags shared by every subcommand.
#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `tgrpo_executor=debug`).
    #[arg(long, env = "TGRPO_LOG", default_value = "info", global = true)]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "TGRPO_LOG_FORMAT", value_enum, default_value = "pretty", global = true)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber; call once, before anything logs.
pub fn init(args: &LoggingArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|err| anyhow::anyhow!("invalid --log-level {:?}: {err}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
