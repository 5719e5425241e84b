//! The data stage: MBPP into `data/mbpp_{train,validation,test}.jsonl` and a manifest.
//!
//! Sources (`[data] source`): the Hugging Face hub (parquet, through the hub cache), a
//! local MBPP JSONL or parquet file, the MBPP release compiled into the binary, or the
//! CPU demo's built-in problems. With `offline_fallback`, a hub that cannot be reached
//! (and has no cached copy) falls back to the embedded release, and the manifest and the
//! report say so. The test split (task ids 11–510) is held out; the other problems are
//! pooled and split into train and validation with `data.seed` and
//! `data.train_fraction`. The demo's problems are both the training and the test set.
//!
//! The files hold MBPP rows (`task_id`, `text`, `code`, `test_list`, `test_setup_code`,
//! `challenge_test_list`), the format of the original release, which every other stage
//! and the Python original read.
//!
//! Resuming: when the manifest and the three files exist and the manifest's settings are
//! the config's, the stage does nothing. Files are written atomically and the manifest
//! last, so an interrupted stage reruns from scratch.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tgrpo_dataset::hub::HubDataset;
use tgrpo_dataset::{Problem, jsonl, mbpp};

use crate::config::{DataSource, TgrpoConfig};
use crate::error::{PipelineError, Result};

/// One MBPP row as written by the data stage (the `full` release's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MbppRecord {
    /// Task number.
    pub task_id: u64,
    /// The problem statement.
    pub text: String,
    /// The reference solution.
    pub code: String,
    /// Assert statements.
    pub test_list: Vec<String>,
    /// Code run before the program.
    pub test_setup_code: String,
    /// Extra tests of the original release (not used by tgrpo; kept for compatibility).
    pub challenge_test_list: Vec<String>,
}

impl MbppRecord {
    /// The row of an MBPP problem (its task id must be a number).
    pub fn from_problem(problem: &Problem) -> Result<Self> {
        let task_id = problem.task_id.parse().map_err(|_| {
            PipelineError::stage(
                "data",
                format!("task id {:?} is not an MBPP number", problem.task_id),
            )
        })?;
        Ok(Self {
            task_id,
            text: problem.text.clone(),
            code: problem.reference.clone().unwrap_or_default(),
            test_list: problem.tests.clone(),
            test_setup_code: problem.setup_code.clone(),
            challenge_test_list: Vec::new(),
        })
    }
}

/// What the data stage records next to its files, and compares on a rerun.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataManifest {
    /// The source the config asked for (`hub`, `path`, `embedded`, `demo`).
    pub requested: DataSource,
    /// The source actually read: `hub`, `path`, `embedded` (also after a fallback), `demo`.
    pub used: DataSource,
    /// Human-readable provenance: repository and commit, file path, or "embedded".
    pub origin: String,
    /// Why the hub was not used, when it fell back to the embedded release.
    pub fallback_reason: Option<String>,
    /// Hub revision asked for (hub source only).
    pub revision: Option<String>,
    /// Hub commit read (hub source only, when known).
    pub commit: Option<String>,
    /// The local file (path source only).
    pub path: Option<PathBuf>,
    /// Split seed.
    pub seed: u64,
    /// Train share of the pooled problems.
    pub train_fraction: f64,
    /// Problems read.
    pub total: usize,
    /// Problems per file.
    pub train: usize,
    /// Problems per file.
    pub validation: usize,
    /// Problems per file.
    pub test: usize,
}

/// What the data stage did.
#[derive(Debug, Clone)]
pub struct DataReport {
    /// The manifest (read back when the stage had nothing to do).
    pub manifest: DataManifest,
    /// The files were already there.
    pub already_done: bool,
    /// `data/mbpp_train.jsonl`.
    pub train_path: PathBuf,
    /// `data/mbpp_validation.jsonl`.
    pub validation_path: PathBuf,
    /// `data/mbpp_test.jsonl`.
    pub test_path: PathBuf,
}

impl std::fmt::Display for DataReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let manifest = &self.manifest;
        write!(
            f,
            "data: {} problems from {}{} → train {}, validation {}, test {} in {}",
            manifest.total,
            manifest.origin,
            manifest
                .fallback_reason
                .as_ref()
                .map(|reason| format!(" (the hub was not reachable: {reason})"))
                .unwrap_or_default(),
            manifest.train,
            manifest.validation,
            manifest.test,
            self.train_path
                .parent()
                .map_or_else(String::new, |dir| dir.display().to_string()),
        )?;
        if self.already_done {
            write!(f, " (already there)")?;
        }
        Ok(())
    }
}

/// Problems read from the configured source, with their provenance.
struct Loaded {
    problems: Vec<Problem>,
    used: DataSource,
    origin: String,
    fallback_reason: Option<String>,
    commit: Option<String>,
}

fn load_file(path: &Path) -> Result<Vec<Problem>> {
    let is_parquet = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("parquet"));
    Ok(if is_parquet {
        tgrpo_dataset::hub::load_parquet(path)?
    } else {
        mbpp::load_jsonl(path)?
    })
}

fn embedded(fallback_reason: Option<String>) -> Loaded {
    Loaded {
        problems: mbpp::embedded(),
        used: DataSource::Embedded,
        origin: "the MBPP release embedded in the binary".to_string(),
        fallback_reason,
        commit: None,
    }
}

async fn load(config: &TgrpoConfig) -> Result<Loaded> {
    let data = &config.data;
    Ok(match data.source {
        DataSource::Demo => Loaded {
            problems: crate::demo::problems(),
            used: DataSource::Demo,
            origin: "the demo's 16 built-in problems".to_string(),
            fallback_reason: None,
            commit: None,
        },
        DataSource::Embedded => embedded(None),
        DataSource::Path => {
            let path = data
                .path
                .clone()
                .expect("validate() requires data.path for the path source");
            Loaded {
                problems: load_file(&path)?,
                used: DataSource::Path,
                origin: path.display().to_string(),
                fallback_reason: None,
                commit: None,
            }
        }
        DataSource::Hub => {
            let dataset = HubDataset {
                repo_id: data.hub_repo.clone(),
                revision: data.revision.clone(),
                config: data.hub_config.clone(),
                cache_dir: None,
                offline: false,
            };
            let fetched = tokio::task::spawn_blocking(move || {
                // A filled cache answers without the network; only then try it.
                let cached = tgrpo_dataset::hub::load_mbpp(&HubDataset {
                    offline: true,
                    ..dataset.clone()
                });
                cached.or_else(|_| tgrpo_dataset::hub::load_mbpp(&dataset))
            })
            .await
            .map_err(|join| PipelineError::stage("data", format!("hub thread failed: {join}")))?;
            match fetched {
                Ok(hub) => Loaded {
                    problems: hub.problems,
                    used: DataSource::Hub,
                    origin: format!(
                        "hf://datasets/{}@{} ({})",
                        data.hub_repo,
                        hub.commit.as_deref().unwrap_or(&data.revision),
                        hub.files.join(", ")
                    ),
                    fallback_reason: None,
                    commit: hub.commit,
                },
                Err(err) if data.offline_fallback => {
                    tracing::warn!(%err, "the hub is not reachable: using the embedded MBPP release");
                    embedded(Some(err.to_string()))
                }
                Err(err) => return Err(err.into()),
            }
        }
    })
}

/// Runs the data stage (see the module docs).
pub async fn prepare_data(config: &TgrpoConfig) -> Result<DataReport> {
    let data = &config.data;
    let train_path = data.train_path();
    let validation_path = data.validation_path();
    let test_path = data.test_path();
    let manifest_path = data.manifest_path();
    let report = |manifest, already_done| DataReport {
        manifest,
        already_done,
        train_path: train_path.clone(),
        validation_path: validation_path.clone(),
        test_path: test_path.clone(),
    };
    if let Some(manifest) = read_manifest(&manifest_path)
        && manifest.requested == data.source
        && manifest.seed == data.seed
        && manifest.train_fraction == data.train_fraction
        && (data.source != DataSource::Path || manifest.path == data.path)
        && (data.source != DataSource::Hub || manifest.revision.as_ref() == Some(&data.revision))
        && [&train_path, &validation_path, &test_path]
            .iter()
            .all(|path| path.is_file())
    {
        return Ok(report(manifest, true));
    }

    let loaded = load(config).await?;
    let total = loaded.problems.len();
    let (train, validation, test) = if loaded.used == DataSource::Demo {
        // The demo has no held-out set: it trains and evaluates on its 16 problems.
        (loaded.problems.clone(), Vec::new(), loaded.problems)
    } else {
        let splits = mbpp::pooled_split(loaded.problems, data.seed, data.train_fraction)?;
        (splits.train, splits.validation, splits.test)
    };
    if train.is_empty() {
        return Err(PipelineError::stage(
            "data",
            format!("{} holds no training problems", loaded.origin),
        ));
    }
    std::fs::create_dir_all(&data.output_dir)
        .map_err(|err| PipelineError::io(&data.output_dir, err))?;
    for (path, problems) in [
        (&train_path, &train),
        (&validation_path, &validation),
        (&test_path, &test),
    ] {
        let rows = problems
            .iter()
            .map(MbppRecord::from_problem)
            .collect::<Result<Vec<_>>>()?;
        jsonl::write_atomic(path, &rows)?;
    }
    let manifest = DataManifest {
        requested: data.source,
        used: loaded.used,
        origin: loaded.origin,
        fallback_reason: loaded.fallback_reason,
        revision: (data.source == DataSource::Hub).then(|| data.revision.clone()),
        commit: loaded.commit,
        path: (data.source == DataSource::Path)
            .then(|| data.path.clone())
            .flatten(),
        seed: data.seed,
        train_fraction: data.train_fraction,
        total,
        train: train.len(),
        validation: validation.len(),
        test: test.len(),
    };
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    write_file_atomic(&manifest_path, text.as_bytes())?;
    Ok(report(manifest, false))
}

fn read_manifest(path: &Path) -> Option<DataManifest> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|err| PipelineError::io(parent, err))?;
    let temporary = parent.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&temporary, bytes).map_err(|err| PipelineError::io(&temporary, err))?;
    std::fs::rename(&temporary, path).map_err(|err| PipelineError::io(path, err))
}
