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
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `tgrpo_executor=debug`) [default:
    /// info; warn for `tgrpo local`, whose summary is the output].
    #[arg(long, env = "TGRPO_LOG", global = true)]
    pub log_level: Option<String>,

    /// Log line format.
    #[arg(
        long,
        env = "TGRPO_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
}

/// Installs the global subscriber; call once, before anything logs. `default_level`
/// applies when no level was given.
pub fn init(args: &LoggingArgs, default_level: &str) -> anyhow::Result<()> {
    let level = args.log_level.as_deref().unwrap_or(default_level);
    let filter = EnvFilter::try_new(level)
        .map_err(|err| anyhow::anyhow!("invalid --log-level {level:?}: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
