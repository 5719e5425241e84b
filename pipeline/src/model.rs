//! The student model of a run: where it comes from and loading it.
//!
//! `[model] source` is an HF directory, a GGUF file or a hub id, loaded as is, or
//! [`DEMO_MODEL_SOURCE`](crate::config::DEMO_MODEL_SOURCE): the CPU demo's tiny model,
//! built (deterministically) into `output_dir/demo_model/` the first time a stage needs
//! it and reused afterwards.

use std::path::{Path, PathBuf};

use tgrpo_policy::{LoadOptions, ModelSource, Policy};

use crate::config::TgrpoConfig;
use crate::error::{PipelineError, Result};

/// Where the demo model is built for a run.
pub fn demo_model_dir(config: &TgrpoConfig) -> PathBuf {
    config.output_dir.join("demo_model")
}

/// The model spec stages load (`ModelSource::parse` syntax): `[model] source`, or the
/// demo model's directory, built first when missing.
pub fn resolve_model(config: &TgrpoConfig) -> Result<String> {
    if !config.model.is_demo() {
        return Ok(config.model.source.clone());
    }
    let dir = demo_model_dir(config);
    ensure_demo_model(&dir)?;
    Ok(dir.display().to_string())
}

/// Builds the demo model into `dir` unless a complete one is there. The build goes to a
/// sibling directory that is renamed into place, so an interrupted build leaves nothing
/// half-written behind.
pub fn ensure_demo_model(dir: &Path) -> Result<()> {
    if dir.join("config.json").is_file()
        && dir.join("model.safetensors").is_file()
        && dir.join("tokenizer.json").is_file()
    {
        return Ok(());
    }
    let parent = dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|err| PipelineError::io(parent, err))?;
    let staging = parent.join(format!(
        ".{}.building-{}",
        dir.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "demo_model".to_string()),
        std::process::id()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|err| PipelineError::io(&staging, err))?;
    }
    crate::demo::build_model(&staging, &crate::demo::problems())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|err| PipelineError::io(dir, err))?;
    }
    std::fs::rename(&staging, dir).map_err(|err| PipelineError::io(dir, err))?;
    tracing::info!(dir = %dir.display(), "demo model built");
    Ok(())
}

/// Loads `spec` on the run's device, on a blocking thread (big models take seconds).
pub async fn load_policy(config: &TgrpoConfig, spec: &str) -> Result<Policy> {
    let device = tgrpo_learner::config::open_device(&config.model.device)?;
    let dtype = tgrpo_learner::config::parse_dtype(&config.model.dtype, device.is_cpu())?;
    let source = ModelSource::parse(spec);
    let started = std::time::Instant::now();
    let policy =
        tokio::task::spawn_blocking(move || Policy::load(&source, &LoadOptions { device, dtype }))
            .await
            .map_err(|join| {
                PipelineError::stage("model", format!("loading thread failed: {join}"))
            })??;
    tracing::info!(model = %spec, seconds = started.elapsed().as_secs_f64(), "model loaded");
    Ok(policy)
}
