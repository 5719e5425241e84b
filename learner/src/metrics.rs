//! Training metrics: one JSON object per optimizer step, appended to `metrics.jsonl`.
//!
//! A resumed run first cuts the file back to the checkpoint's step, so the file always
//! reads as one run without the steps that were lost and redone.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LearnerError, Result};

/// Everything logged about one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StepMetrics {
    /// Optimizer step, 1-based, counting skipped steps.
    pub step: u64,
    /// Adapter version after this step.
    pub adapter_version: u64,
    /// Pass over the prompt set the batch came from (0-based).
    pub epoch: u64,
    /// Which of the batch's `num_iterations` updates this is (0-based).
    pub iteration: usize,
    /// The composite loss `α·grpo + β·teacher_sft + γ·self_sft`.
    pub loss: f64,
    /// The GRPO term (unweighted), if any group contributed.
    pub loss_grpo: Option<f64>,
    /// The teacher-SFT cross-entropy (unweighted), if any trace was drawn.
    pub loss_teacher_sft: Option<f64>,
    /// The self-SFT cross-entropy (unweighted), if any completion was picked.
    pub loss_self_sft: Option<f64>,
    /// Mean reward over the batch's completions.
    pub reward_mean: f64,
    /// Sample standard deviation of those rewards.
    pub reward_std: f64,
    /// Groups in the batch.
    pub groups: usize,
    /// Completions in the batch.
    pub completions: usize,
    /// Share of groups whose rewards were all equal.
    pub zero_std_share: f64,
    /// Zero-std groups left out of the GRPO term (dynamic sampling).
    pub dropped_zero_std: usize,
    /// Mean per-token KL to the reference over completion tokens (None without a reference pass).
    pub kl: Option<f64>,
    /// Share of completion tokens whose ratio was clipped.
    pub clip_fraction: f64,
    /// Mean truncated importance weight over completion tokens (1 when off).
    pub importance_weight_mean: f64,
    /// Mean predictive entropy over completion tokens.
    pub entropy: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Teacher examples in the batch.
    pub teacher_examples: usize,
    /// Self-SFT examples picked from the batch.
    pub self_sft_examples: usize,
    /// Tokens trained on in this step (completion + SFT target tokens).
    pub tokens: usize,
    /// Trained tokens per second of this step's wall time.
    pub tokens_per_s: f64,
    /// Wall time of this step.
    pub step_seconds: f64,
    /// Groups in the batch by staleness (learner version − sampling version).
    pub staleness: BTreeMap<u64, usize>,
    /// Groups dropped so far for being too stale.
    pub dropped_stale_total: u64,
    /// Duplicate group submissions ignored so far.
    pub duplicate_groups_total: u64,
    /// Prompts retired so far because a worker could not sample them (too long for the
    /// model's context, for instance).
    #[serde(default)]
    pub skipped_items_total: u64,
    /// Whether this step was skipped (non-finite loss or gradient).
    pub skipped: bool,
    /// Steps skipped so far, this one included.
    pub skipped_total: u64,
}

/// Appends [`StepMetrics`] lines to a JSONL file.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` for appending, creating it (and its directory). With `resume_step`,
    /// lines of steps after it are removed first: they belong to work the checkpoint
    /// does not hold and that the resumed run will redo.
    pub fn open(path: impl Into<PathBuf>, resume_step: Option<u64>) -> Result<Self> {
        let path = path.into();
        if let Some(parent) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| LearnerError::io(parent, err))?;
        }
        match resume_step {
            Some(step) if path.exists() => truncate_after(&path, step)?,
            // A fresh run starts a fresh file.
            None if path.exists() => {
                std::fs::remove_file(&path).map_err(|err| LearnerError::io(&path, err))?
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|err| LearnerError::io(&path, err))?;
        Ok(Self { path, file })
    }

    /// Writes one line and flushes it (a crash loses at most the step in progress).
    pub fn write(&mut self, metrics: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(metrics)
            .map_err(|err| LearnerError::io(&self.path, std::io::Error::other(err.to_string())))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|err| LearnerError::io(&self.path, err))
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every line of a metrics file (for tests and reports); a bad line is an error
/// naming its number.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let file = File::open(path).map_err(|err| LearnerError::io(path, err))?;
    let mut out = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|err| LearnerError::io(path, err))?;
        if line.trim().is_empty() {
            continue;
        }
        let metrics = serde_json::from_str(&line).map_err(|err| {
            LearnerError::io(
                path,
                std::io::Error::other(format!("line {}: {err}", index + 1)),
            )
        })?;
        out.push(metrics);
    }
    Ok(out)
}

fn truncate_after(path: &Path, step: u64) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|err| LearnerError::io(path, err))?;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        // A torn last line (crash mid-write) or a later step is dropped.
        let keep = serde_json::from_str::<StepMetrics>(line)
            .map(|metrics| metrics.step <= step)
            .unwrap_or(false);
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let temporary = path.with_extension("jsonl.tmp");
    std::fs::write(&temporary, kept).map_err(|err| LearnerError::io(&temporary, err))?;
    std::fs::rename(&temporary, path).map_err(|err| LearnerError::io(path, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_cuts_the_file_back_to_the_checkpoint_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/metrics.jsonl");
        let mut writer = MetricsWriter::open(&path, None).unwrap();
        for step in 1..=5 {
            writer
                .write(&StepMetrics {
                    step,
                    loss: step as f64,
                    ..Default::default()
                })
                .unwrap();
        }
        drop(writer);
        // A torn line at the end, as a crash would leave.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 6, \"lo");
        std::fs::write(&path, text).unwrap();

        let mut writer = MetricsWriter::open(&path, Some(3)).unwrap();
        writer
            .write(&StepMetrics {
                step: 4,
                loss: 40.0,
                ..Default::default()
            })
            .unwrap();
        let lines = read_metrics(&path).unwrap();
        let steps: Vec<(u64, f64)> = lines.iter().map(|m| (m.step, m.loss)).collect();
        assert_eq!(steps, vec![(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]);

        // A fresh run replaces the file.
        drop(MetricsWriter::open(&path, None).unwrap());
        assert!(read_metrics(&path).unwrap().is_empty());
    }
}
