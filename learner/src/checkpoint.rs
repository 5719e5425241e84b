//! Checkpoint directories: `OUTPUT/checkpoint-STEP/` holding the PEFT adapter
//! (`adapter_model.safetensors`, `adapter_config.json`), the optimizer moments
//! (`optimizer.safetensors`) and `trainer_state.json` (step, adapter version, RNG states,
//! teacher and data cursors, the config).
//!
//! A checkpoint is written into a hidden temporary directory and renamed into place, so a
//! crash mid-write never leaves a half checkpoint under a `checkpoint-*` name; only the
//! newest `keep` checkpoints are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::LearnerConfig;
use crate::error::{LearnerError, Result};
use crate::teacher::TeacherCursor;

/// File holding the trainer's scalar state.
pub const STATE_FILE: &str = "trainer_state.json";
/// File holding the optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Prefix of checkpoint directory names (`checkpoint-42`).
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// Layout version of [`CheckpointState`]; bumped when it changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// The trainer's counters and cursors: everything besides tensors that an exact resume
/// needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainerState {
    /// Optimizer steps so far (skipped ones included): the schedule position.
    pub step: u64,
    /// Adapter version of the current weights (bumped once per trained batch).
    pub adapter_version: u64,
    /// Training batches consumed.
    pub batches: u64,
    /// AdamW updates actually applied (the bias-correction `t`).
    pub optimizer_updates: u64,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: u64,
    /// Where the teacher-trace order stands.
    pub teacher_cursor: TeacherCursor,
}

/// The content of `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Counters and cursors.
    pub trainer: TrainerState,
    /// The policy's dropout RNG state (opaque to the learner).
    pub policy_rng: serde_json::Value,
    /// The config the run used.
    pub config: LearnerConfig,
    /// State owned by whoever drives the learner (the service stores its data cursor,
    /// leases to redo and seen keys here).
    pub driver: serde_json::Value,
}

impl CheckpointState {
    /// Reads `dir/trainer_state.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|err| LearnerError::io(&path, err))?;
        let state: Self = serde_json::from_str(&text)
            .map_err(|err| LearnerError::checkpoint(dir, format!("{STATE_FILE}: {err}")))?;
        if state.format_version != FORMAT_VERSION {
            return Err(LearnerError::checkpoint(
                dir,
                format!(
                    "format version {} is not the supported {FORMAT_VERSION}",
                    state.format_version
                ),
            ));
        }
        Ok(state)
    }

    /// Writes `dir/trainer_state.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|err| LearnerError::checkpoint(dir, err.to_string()))?;
        std::fs::write(&path, text).map_err(|err| LearnerError::io(&path, err))
    }
}

/// The directory name of the checkpoint at `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{step}")
}

/// The checkpoints in `output_dir`, oldest first, as `(step, path)`. Temporary directories
/// of interrupted writes are not listed.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(output_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(LearnerError::io(output_dir, err)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| LearnerError::io(output_dir, err))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|name| name.strip_prefix(CHECKPOINT_PREFIX))
            .and_then(|step| step.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint in `output_dir`, if any.
pub fn latest_checkpoint(output_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(output_dir)?.pop().map(|(_, path)| path))
}

/// Writes a checkpoint: `fill` populates a fresh temporary directory, which is then
/// renamed to `output_dir/checkpoint-STEP` (replacing an older one of the same step), and
/// all but the newest `keep` checkpoints are removed.
pub fn write_checkpoint(
    output_dir: &Path,
    step: u64,
    keep: usize,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(output_dir).map_err(|err| LearnerError::io(output_dir, err))?;
    let final_dir = output_dir.join(checkpoint_name(step));
    let temporary = output_dir.join(format!(".{}.tmp", checkpoint_name(step)));
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary).map_err(|err| LearnerError::io(&temporary, err))?;
    }
    std::fs::create_dir_all(&temporary).map_err(|err| LearnerError::io(&temporary, err))?;
    fill(&temporary)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|err| LearnerError::io(&final_dir, err))?;
    }
    std::fs::rename(&temporary, &final_dir).map_err(|err| LearnerError::io(&final_dir, err))?;
    prune_checkpoints(output_dir, keep)?;
    Ok(final_dir)
}

/// Removes all but the newest `keep` checkpoints.
pub fn prune_checkpoints(output_dir: &Path, keep: usize) -> Result<()> {
    let checkpoints = list_checkpoints(output_dir)?;
    let excess = checkpoints.len().saturating_sub(keep.max(1));
    for (_, path) in &checkpoints[..excess] {
        std::fs::remove_dir_all(path).map_err(|err| LearnerError::io(path, err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_state(dir: &Path) -> Result<()> {
        CheckpointState {
            format_version: FORMAT_VERSION,
            trainer: TrainerState::default(),
            policy_rng: serde_json::Value::Null,
            config: LearnerConfig::default(),
            driver: serde_json::Value::Null,
        }
        .write(dir)
    }

    #[test]
    fn keeps_the_newest_and_ignores_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 4, 6, 8] {
            write_checkpoint(dir.path(), step, 2, fill_state).unwrap();
        }
        let steps: Vec<u64> = list_checkpoints(dir.path())
            .unwrap()
            .into_iter()
            .map(|(step, _)| step)
            .collect();
        assert_eq!(steps, vec![6, 8]);
        // A write that fails half-way leaves only its temporary directory behind.
        let err = write_checkpoint(dir.path(), 10, 2, |tmp| {
            fill_state(tmp)?;
            Err(LearnerError::checkpoint(tmp, "disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(
            latest_checkpoint(dir.path()).unwrap().unwrap(),
            dir.path().join("checkpoint-8")
        );
        // 10 sorts after 8 numerically, not as text.
        write_checkpoint(dir.path(), 10, 2, fill_state).unwrap();
        assert_eq!(
            latest_checkpoint(dir.path()).unwrap().unwrap(),
            dir.path().join("checkpoint-10")
        );
        assert!(
            latest_checkpoint(&dir.path().join("absent"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn state_round_trips_and_rejects_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        fill_state(dir.path()).unwrap();
        let state = CheckpointState::read(dir.path()).unwrap();
        assert_eq!(state.trainer, TrainerState::default());
        let mut bumped = state.clone();
        bumped.format_version = 99;
        bumped.write(dir.path()).unwrap();
        let err = CheckpointState::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }
}
