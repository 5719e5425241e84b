//! `tgrpo data`: the data stage (MBPP → `data/mbpp_{train,validation,test}.jsonl`).

use std::path::PathBuf;

use clap::Args;
use tgrpo_pipeline::config::{Override, TgrpoConfig};

use super::run_config::ConfigArgs;

/// Arguments of `tgrpo data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Where MBPP comes from: `hub`, `path`, `embedded` or `demo` [default: hub, falling
    /// back to the embedded copy when the hub is unreachable].
    #[arg(long)]
    pub source: Option<String>,

    /// A local MBPP JSONL or parquet file (implies `--source path`).
    #[arg(long)]
    pub path: Option<PathBuf>,

    /// Hub revision (branch, tag or commit) [default: main].
    #[arg(long)]
    pub revision: Option<String>,
}

/// Runs the stage and prints where the files are and where they came from.
pub async fn run(args: DataArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(path) = &args.path {
        overrides.push(Override::new("data.source", "path", "--path"));
        overrides.push(Override::new("data.path", path.display(), "--path"));
    }
    if let Some(source) = &args.source {
        overrides.push(Override::new("data.source", source, "--source"));
    }
    if let Some(revision) = &args.revision {
        overrides.push(Override::new("data.revision", revision, "--revision"));
    }
    let config = args.config.load(&TgrpoConfig::default(), overrides)?;
    let report = tgrpo_pipeline::data::prepare_data(&config).await?;
    println!("{report}");
    println!(
        "files: {}, {}, {}, {}",
        report.train_path.display(),
        report.validation_path.display(),
        report.test_path.display(),
        config.data.manifest_path().display()
    );
    Ok(())
}
