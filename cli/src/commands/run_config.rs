//! Flags every stage shares: the run config file, the output directory, `--set KEY=VALUE`
//! for any key, and progress bars. Layers, later winning: the defaults (or the demo's
//! config for `tgrpo local`), `--config FILE`, `TGRPO_SECTION__KEY` variables, then flags.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tgrpo_pipeline::config::{Override, ProcessEnv, TgrpoConfig};

/// The run config flags.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The run config: one TOML file with every section (examples in configs/); unknown
    /// keys are errors. `TGRPO_SECTION__KEY` variables override it.
    #[arg(long, env = "TGRPO_CONFIG")]
    pub config: Option<PathBuf>,

    /// Where checkpoints, final_model/, metrics.jsonl, reports and eval results go
    /// [default: the config's output_dir, outputs].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,

    /// Set any config key, e.g. `--set training.max_steps=20` (repeatable; wins over the
    /// file and the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// No progress bars (logs only).
    #[arg(long, env = "TGRPO_NO_PROGRESS")]
    pub no_progress: bool,
}

impl ConfigArgs {
    /// Loads and validates the config over `base`, with `extra` overrides (a subcommand's
    /// own flags) applied before `--output-dir` and `--set`.
    pub fn load(&self, base: &TgrpoConfig, extra: Vec<Override>) -> anyhow::Result<TgrpoConfig> {
        let mut overrides = extra;
        if let Some(dir) = &self.output_dir {
            overrides.push(Override::new("output_dir", dir.display(), "--output-dir"));
        }
        for setting in &self.set {
            let (key, value) = setting
                .split_once('=')
                .with_context(|| format!("--set {setting}: expected KEY=VALUE"))?;
            overrides.push(Override::new(key.trim(), value, format!("--set {key}")));
        }
        let config = TgrpoConfig::load_over(base, self.config.as_deref(), &ProcessEnv, &overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether progress bars are drawn.
    pub fn progress(&self) -> bool {
        !self.no_progress
    }
}

/// The HTTP teacher's API key, from the environment only (`TGRPO_TEACHER_API_KEY`, else
/// `OPENAI_API_KEY`).
pub fn teacher_api_key() -> Option<String> {
    tgrpo_teacher::config::api_key_from_env(|name| std::env::var(name).ok())
}

/// Loads a role's `--config FILE`: the whole run config (every section checked, unknown
/// keys rejected by name), `TGRPO_SECTION__KEY` variables applied, validated, and the
/// demo model built when `[model] source` names it. The role then takes its sections and
/// applies its own flags on top.
pub fn load_run_config(path: &std::path::Path) -> anyhow::Result<TgrpoConfig> {
    let mut config = TgrpoConfig::load(Some(path), &ProcessEnv, &[])?;
    config.validate()?;
    if config.model.is_demo() {
        config.model.source = tgrpo_pipeline::model::resolve_model(&config)?;
        config.sync_derived();
    }
    Ok(config)
}
