//! `tgrpo config`: prints the effective run config (defaults, `--config FILE`,
//! `TGRPO_SECTION__KEY` variables and `--set` applied, validated) as TOML, so a layered
//! setup can be checked before anything runs.

use clap::Args;
use tgrpo_pipeline::config::TgrpoConfig;

use super::run_config::ConfigArgs;

/// Arguments of `tgrpo config`.
#[derive(Debug, Args)]
pub struct ConfigCommandArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Start from the CPU demo's config (what `tgrpo local` runs) instead of the defaults.
    #[arg(long)]
    pub demo: bool,
}

/// Prints the effective config.
pub async fn run(args: ConfigCommandArgs) -> anyhow::Result<()> {
    let base = if args.demo {
        tgrpo_pipeline::demo::config()
    } else {
        TgrpoConfig::default()
    };
    let config = args.config.load(&base, Vec::new())?;
    print!("{}", config.to_toml_string());
    Ok(())
}
