//! `tgrpo train`: the train stage in local single-node mode (learner, rollout workers,
//! executor pool and adapter broadcast in this process). Distributed mode runs the same
//! roles as processes with the same config: `tgrpo learner --config FILE`,
//! `tgrpo rollout --config FILE`, `tgrpo executor --config FILE`.

use clap::Args;
use tgrpo_pipeline::config::{Override, TgrpoConfig};
use tgrpo_pipeline::train::StageOptions;

use super::run_config::ConfigArgs;

/// Arguments of `tgrpo train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Continue from the newest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,

    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,

    /// The student model (HF dir, GGUF file, `org/name[@revision]`, or `builtin:demo`).
    #[arg(long)]
    pub model: Option<String>,
}

/// Trains and prints where the adapter, metrics and report are.
pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if args.resume {
        overrides.push(Override::new("training.resume", true, "--resume"));
    }
    if let Some(steps) = args.max_steps {
        overrides.push(Override::new("training.max_steps", steps, "--max-steps"));
    }
    if let Some(model) = &args.model {
        overrides.push(Override::new("model.source", model, "--model"));
    }
    let config = args.config.load(&TgrpoConfig::default(), overrides)?;
    let options = StageOptions {
        progress: args.config.progress(),
        cancel: crate::shutdown::on_signal(),
    };
    let report = tgrpo_pipeline::train(&config, &options).await?;
    super::local::print_train(&report);
    Ok(())
}
