//! The one run config: every section of every role in one TOML file, so that local mode
//! and distributed mode are "every process gets the same file".
//!
//! # Sections
//!
//! | section | owner | what |
//! |---|---|---|
//! | top level | here | `run_id`, `output_dir` |
//! | `[model]` | here | the student: source (HF dir, `org/name[@revision]`, GGUF, or [`DEMO_MODEL_SOURCE`]), device, dtype |
//! | `[lora]` | tgrpo-policy | [`LoraConfig`]: r 64, alpha 128, dropout 0.05, seven projections |
//! | `[data]` | here | [`DataConfig`]: where MBPP comes from, the split, `data/` |
//! | `[teacher]` | tgrpo-teacher | [`TeacherConfig`]: the OpenAI-compatible teacher, cache, traces file |
//! | `[synthesis]` | here | [`SynthesisConfig`]: which teacher answers (HTTP, a local model, the reference teacher) |
//! | `[executor]` | tgrpo-executor | [`ExecutorConfig`]: the sandbox pool |
//! | `[grpo]`, `[dual_source]`, `[training]`, `[learner]` | tgrpo-learner | the objective, optimizer, schedule, learner service |
//! | `[rollout]` | tgrpo-rollout | [`RolloutConfig`]: workers, executor endpoints, scoring |
//! | `[broadcast]` | tgrpo-broadcast | [`BroadcastConfig`]: NATS adapter broadcast |
//! | `[evaluation]` | here | [`EvaluationConfig`]: n, k, temperature, dataset |
//! | `[local]` | here | [`LocalConfig`]: local single-node mode |
//!
//! # One student, one run
//!
//! Some keys of the role sections are *derived*, so that the roles cannot disagree: the
//! learner's and the rollout workers' `model`, `device` and `dtype` come from `[model]`,
//! their `run_id` from the top-level `run_id`, and `training.output_dir` from the top-level
//! `output_dir`. Setting a derived key is an error that names the key to set instead.
//! Two more follow their source unless set explicitly: `learner.prompts_path` (the data
//! stage's `mbpp_train.jsonl` under `data.output_dir`) and `dual_source.teacher_traces_path`
//! (`teacher.traces_path`, where synthesis writes).
//!
//! # Layers
//!
//! [`TgrpoConfig::load`] applies, later winning: the defaults (the seed's, DESIGN.md), the
//! TOML file, `TGRPO_*` environment variables, then explicit overrides (CLI flags). Every
//! layer is checked by name: an unknown key, in the file or in a variable, is an error such
//! as `unknown key training.learnig_rate (set by configs/run.toml)`.
//!
//! # Environment variables
//!
//! `TGRPO_<SECTION>__<KEY>` sets `section.key`: the prefix `TGRPO_`, then the key path in
//! upper case with a double underscore between levels (single underscores belong to key
//! names). Examples: `TGRPO_TRAINING__LEARNING_RATE=1e-4`,
//! `TGRPO_ROLLOUT__SCORING__REWARD_KIND=scaled`, `TGRPO_MODEL__DEVICE=cuda:1`,
//! `TGRPO_ROLLOUT__EXECUTOR_ENDPOINTS=exec-0:50051,exec-1:50051` (a list: comma-separated,
//! or a TOML array). The two top-level keys are `TGRPO_RUN_ID` and `TGRPO_OUTPUT_DIR`.
//! Other `TGRPO_*` variables without a double underscore are left alone (they are the
//! subcommands' flag variables, e.g. `TGRPO_EXECUTOR_ENDPOINTS`). A value is read as the
//! type the key has: strings verbatim, numbers and booleans parsed, lists split on commas.
//! Variables come through an [`EnvSource`], so tests pass a map instead of touching the
//! process environment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tgrpo_broadcast::BroadcastConfig;
use tgrpo_executor::ExecutorConfig;
use tgrpo_learner::{
    DualSourceConfig, GrpoConfig, LearnerConfig, PromptsFormat, ServiceConfig, TrainingConfig,
};
use tgrpo_policy::LoraConfig;
use tgrpo_rollout::RolloutConfig;
use tgrpo_teacher::TeacherConfig;

/// Prefix of every environment variable the config reads.
pub const ENV_PREFIX: &str = "TGRPO_";
/// Separator between key levels in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// The `[model] source` that names the CPU demo's tiny model, built at start from the
/// built-in problems (see the `demo` module) instead of loaded from disk or the hub.
pub const DEMO_MODEL_SOURCE: &str = "builtin:demo";

/// Keys whose value comes from another key, and that key.
const DERIVED_KEYS: &[(&str, &str)] = &[
    ("learner.model", "model.source"),
    ("learner.device", "model.device"),
    ("learner.dtype", "model.dtype"),
    ("learner.run_id", "run_id"),
    ("rollout.model", "model.source"),
    ("rollout.device", "model.device"),
    ("rollout.dtype", "model.dtype"),
    ("rollout.run_id", "run_id"),
    ("training.output_dir", "output_dir"),
];

/// Errors of loading or checking a config; each names the key and where it was set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML (the message has the line and column).
    #[error("{origin}: {message}")]
    Syntax {
        /// The file (or other text) at fault.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key no section has.
    #[error("unknown key {key} (set by {origin}); {expected}")]
    UnknownKey {
        /// The dotted key path, e.g. `training.learnig_rate`.
        key: String,
        /// The file or variable that set it.
        origin: String,
        /// The keys that section does have, when known.
        expected: String,
    },
    /// A key with a value of the wrong type or an unknown variant.
    #[error("{key}: {message} (set by {origin})")]
    InvalidValue {
        /// The dotted key path.
        key: String,
        /// The file or variable that set it.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A derived key was set (see the module docs).
    #[error(
        "{key} is taken from {source_key} (one value for every role); set {source_key} instead (set by {origin})"
    )]
    DerivedKey {
        /// The key that was set.
        key: String,
        /// The key it is derived from.
        source_key: String,
        /// The file or variable that set it.
        origin: String,
    },
    /// An override names a key with a malformed path.
    #[error("{origin}: `{key}` is not a config key path")]
    BadKeyPath {
        /// The key as given.
        key: String,
        /// Where it came from.
        origin: String,
    },
    /// A value is out of range or contradicts another; the message names the field.
    #[error("invalid config: {field}: {message}")]
    Invalid {
        /// The dotted key path at fault.
        field: String,
        /// Why.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// `[model]`: the student every role loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// An HF directory, a `.gguf` file, `org/name[@revision]` on the hub (pin a commit for
    /// reproducible runs), or [`DEMO_MODEL_SOURCE`].
    pub source: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Base-weight dtype: `auto` (f32 on CPU, bf16 on GPU), `f32`, `bf16` or `f16`.
    pub dtype: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            source: "Qwen/Qwen2.5-Coder-1.5B-Instruct".to_string(),
            device: "cpu".to_string(),
            dtype: "auto".to_string(),
        }
    }
}

impl ModelConfig {
    /// Whether the source is the CPU demo's built-in tiny model.
    pub fn is_demo(&self) -> bool {
        self.source.trim() == DEMO_MODEL_SOURCE
    }
}

/// Where the data stage gets its problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// MBPP's parquet files from the Hugging Face hub (or its cache).
    #[default]
    Hub,
    /// A local MBPP JSONL or parquet file (`data.path`).
    Path,
    /// The MBPP release compiled into the binary (no network at all).
    Embedded,
    /// The CPU demo's 16 tiny built-in problems; train and test are the same set.
    Demo,
}

/// `[data]`: the data stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Where the problems come from.
    pub source: DataSource,
    /// The local file for `source = "path"` (`.jsonl` or `.parquet`, MBPP rows).
    pub path: Option<PathBuf>,
    /// The hub dataset repository.
    pub hub_repo: String,
    /// Branch, tag or commit of the hub dataset (the manifest records the commit read).
    pub revision: String,
    /// Configuration directory in the hub repository (`full` or `sanitized`).
    pub hub_config: String,
    /// When the hub cannot be reached (and its cache is empty), use the embedded MBPP
    /// release instead of failing; the manifest and the output say so.
    pub offline_fallback: bool,
    /// Seed of the pooled train/validation shuffle.
    pub seed: u64,
    /// Share of the pooled problems that goes to training.
    pub train_fraction: f64,
    /// Where `mbpp_{train,validation,test}.jsonl` and the manifest go.
    pub output_dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Hub,
            path: None,
            hub_repo: tgrpo_dataset::hub::MBPP_REPO.to_string(),
            revision: "main".to_string(),
            hub_config: "full".to_string(),
            offline_fallback: true,
            seed: tgrpo_dataset::mbpp::DEFAULT_SPLIT_SEED,
            train_fraction: tgrpo_dataset::mbpp::DEFAULT_TRAIN_FRACTION,
            output_dir: PathBuf::from("data"),
        }
    }
}

impl DataConfig {
    /// The training problems the data stage writes.
    pub fn train_path(&self) -> PathBuf {
        self.output_dir.join("mbpp_train.jsonl")
    }

    /// The validation problems the data stage writes.
    pub fn validation_path(&self) -> PathBuf {
        self.output_dir.join("mbpp_validation.jsonl")
    }

    /// The held-out test problems the data stage writes.
    pub fn test_path(&self) -> PathBuf {
        self.output_dir.join("mbpp_test.jsonl")
    }

    /// The data stage's manifest (source, revision, seed, counts).
    pub fn manifest_path(&self) -> PathBuf {
        self.output_dir.join("manifest.json")
    }

    fn validate(&self) -> Result<()> {
        if self.source == DataSource::Path && self.path.is_none() {
            return Err(ConfigError::invalid(
                "data.path",
                "is required when data.source = \"path\"",
            ));
        }
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return Err(ConfigError::invalid(
                "data.train_fraction",
                format!("must be in (0, 1], got {}", self.train_fraction),
            ));
        }
        if self.hub_repo.trim().is_empty() {
            return Err(ConfigError::invalid("data.hub_repo", "is empty"));
        }
        if self.revision.trim().is_empty() {
            return Err(ConfigError::invalid("data.revision", "is empty"));
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data.output_dir", "is empty"));
        }
        Ok(())
    }
}

/// Which teacher answers during synthesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TeacherKind {
    /// The OpenAI-compatible server at `teacher.api_url` (Qwen3-32B behind vLLM).
    #[default]
    Http,
    /// A policy-crate model in this process (`synthesis.local_model`).
    Local,
    /// The reference teacher: answers with each problem's reference solution (the CPU
    /// demo's stand-in for Qwen3-32B; it only knows problems that have a reference).
    Reference,
}

/// `[synthesis]`: the synthesis stage's choices that are not the teacher client's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisConfig {
    /// Who answers.
    pub teacher: TeacherKind,
    /// The model of `teacher = "local"`: an HF directory, a `.gguf` file or a hub id.
    pub local_model: Option<String>,
    /// Ask about the first N training problems only (0 = all).
    pub limit: usize,
    /// Score each trace's code against the tests before recording it (off: every trace
    /// is recorded as unverified and never used by the teacher-SFT term).
    pub verify: bool,
}

impl Default for SynthesisConfig {
    fn default() -> Self {
        Self {
            teacher: TeacherKind::Http,
            local_model: None,
            limit: 0,
            verify: true,
        }
    }
}

impl SynthesisConfig {
    fn validate(&self) -> Result<()> {
        if self.teacher == TeacherKind::Local
            && self
                .local_model
                .as_deref()
                .is_none_or(|model| model.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "synthesis.local_model",
                "is required when synthesis.teacher = \"local\"",
            ));
        }
        Ok(())
    }
}

/// Which problem file format the eval stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalDataset {
    /// MBPP rows (the data stage's `mbpp_test.jsonl` by default).
    #[default]
    Mbpp,
    /// The openai/human-eval JSONL format (`evaluation.data_path` required).
    Humaneval,
}

/// `[evaluation]`: the eval stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// The problems' format.
    pub dataset: EvalDataset,
    /// The problems; default: `data.output_dir/mbpp_test.jsonl` for MBPP.
    pub data_path: Option<PathBuf>,
    /// Evaluate the first N problems only (0 = all).
    pub limit: usize,
    /// n: samples per problem.
    pub num_samples: usize,
    /// The k of pass@k; each must be ≤ `num_samples`.
    pub k: Vec<usize>,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f64,
    /// Longest answer.
    pub max_new_tokens: usize,
    /// Run seed of the sampling streams (each sample's seed derives from it).
    pub seed: u64,
    /// Adapter to evaluate on top of the base model; default for `tgrpo all` (and the
    /// "after" of local mode): `output_dir/final_model` when it exists.
    pub adapter: Option<PathBuf>,
    /// The results JSON; default: `output_dir/evaluation_results.json`.
    pub output: Option<PathBuf>,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            dataset: EvalDataset::Mbpp,
            data_path: None,
            limit: 0,
            num_samples: 100,
            k: vec![1, 5, 10, 25, 50, 100],
            temperature: 0.8,
            top_p: 0.95,
            max_new_tokens: 512,
            seed: 42,
            adapter: None,
            output: None,
        }
    }
}

impl EvaluationConfig {
    /// Checks ranges and that every k is at most n.
    pub fn validate(&self) -> Result<()> {
        if self.num_samples == 0 {
            return Err(ConfigError::invalid(
                "evaluation.num_samples",
                "must be at least 1",
            ));
        }
        if self.k.is_empty() {
            return Err(ConfigError::invalid("evaluation.k", "is empty"));
        }
        if let Some(&k) = self.k.iter().find(|&&k| k == 0 || k > self.num_samples) {
            return Err(ConfigError::invalid(
                "evaluation.k",
                format!(
                    "k = {k} is not within 1..=evaluation.num_samples ({}): pass@k needs at least k samples",
                    self.num_samples
                ),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(ConfigError::invalid(
                "evaluation.temperature",
                format!("must be a number ≥ 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ConfigError::invalid(
                "evaluation.top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(ConfigError::invalid(
                "evaluation.max_new_tokens",
                "must be at least 1",
            ));
        }
        if self.dataset == EvalDataset::Humaneval && self.data_path.is_none() {
            return Err(ConfigError::invalid(
                "evaluation.data_path",
                "is required for dataset = \"humaneval\" (the openai/human-eval JSONL file)",
            ));
        }
        Ok(())
    }

    /// The k values sorted, without duplicates.
    pub fn sorted_k(&self) -> Vec<usize> {
        let set: BTreeSet<usize> = self.k.iter().copied().collect();
        set.into_iter().collect()
    }
}

/// `[local]`: local single-node mode (every role in one process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Rollout workers sampling concurrently (each a task sharing the one model).
    pub rollout_workers: usize,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self { rollout_workers: 1 }
    }
}

/// Every section of a run (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TgrpoConfig {
    /// Names the run: the adapter broadcast's bucket and subject, the learner's leases.
    pub run_id: String,
    /// Checkpoints, `final_model/`, `metrics.jsonl`, reports and eval results go here.
    pub output_dir: PathBuf,
    /// `[model]`.
    pub model: ModelConfig,
    /// `[lora]`.
    pub lora: LoraConfig,
    /// `[data]`.
    pub data: DataConfig,
    /// `[teacher]`.
    pub teacher: TeacherConfig,
    /// `[synthesis]`.
    pub synthesis: SynthesisConfig,
    /// `[executor]`: the in-process sandbox pool (and `tgrpo executor`).
    pub executor: ExecutorConfig,
    /// `[grpo]`.
    pub grpo: GrpoConfig,
    /// `[dual_source]`.
    pub dual_source: DualSourceConfig,
    /// `[training]`.
    pub training: TrainingConfig,
    /// `[learner]`.
    pub learner: ServiceConfig,
    /// `[rollout]`.
    pub rollout: RolloutConfig,
    /// `[broadcast]`.
    pub broadcast: BroadcastConfig,
    /// `[evaluation]`.
    pub evaluation: EvaluationConfig,
    /// `[local]`.
    pub local: LocalConfig,
}

impl Default for TgrpoConfig {
    fn default() -> Self {
        let mut config = Self {
            run_id: "tgrpo".to_string(),
            output_dir: PathBuf::from("outputs"),
            model: ModelConfig::default(),
            lora: LoraConfig::default(),
            data: DataConfig::default(),
            teacher: TeacherConfig::default(),
            synthesis: SynthesisConfig::default(),
            executor: ExecutorConfig::default(),
            grpo: GrpoConfig::default(),
            dual_source: DualSourceConfig::default(),
            training: TrainingConfig::default(),
            learner: ServiceConfig::default(),
            rollout: RolloutConfig::default(),
            broadcast: BroadcastConfig::default(),
            evaluation: EvaluationConfig::default(),
            local: LocalConfig::default(),
        };
        config.apply_derived(&BTreeSet::new());
        config
    }
}

/// Where environment variables come from: the process, or a map in tests.
pub trait EnvSource {
    /// Every `(name, value)` pair.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect()
    }
}

/// No variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl EnvSource for NoEnv {
    fn vars(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl EnvSource for HashMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

impl EnvSource for [(&str, &str)] {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn vars(&self) -> Vec<(String, String)> {
        self.as_slice().vars()
    }
}

/// One explicit setting (a CLI flag): `key` is a dotted path (`training.max_steps`),
/// `value` is read like an environment variable's, `origin` names the flag in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted key path.
    pub key: String,
    /// The value as text.
    pub value: String,
    /// What set it, e.g. `--output-dir`.
    pub origin: String,
}

impl Override {
    /// An override of `key` by `origin`.
    pub fn new(key: impl Into<String>, value: impl ToString, origin: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.to_string(),
            origin: origin.into(),
        }
    }
}

/// The environment variable that sets `key` (`training.learning_rate` →
/// `TGRPO_TRAINING__LEARNING_RATE`).
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join(ENV_SEPARATOR)
    )
}

/// The key path an environment variable sets, or `None` when the variable is not a
/// config override (see the module docs).
pub fn key_for_env_var(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    match rest {
        "RUN_ID" => return Some(vec!["run_id".to_string()]),
        "OUTPUT_DIR" => return Some(vec!["output_dir".to_string()]),
        _ => {}
    }
    if !rest.contains(ENV_SEPARATOR) {
        return None;
    }
    Some(
        rest.split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect(),
    )
}

/// The user's layers merged: the table and, per key path, what set it.
#[derive(Debug, Default)]
struct Layers {
    table: toml::Table,
    origins: BTreeMap<String, String>,
}

impl Layers {
    fn record_origins(&mut self, prefix: &str, value: &toml::Value, origin: &str) {
        if let toml::Value::Table(table) = value {
            for (key, inner) in table {
                let path = join_key(prefix, key);
                self.record_origins(&path, inner, origin);
            }
        }
        if !prefix.is_empty() {
            self.origins.insert(prefix.to_string(), origin.to_string());
        }
    }

    fn merge_file(&mut self, table: toml::Table, origin: &str) {
        let value = toml::Value::Table(table);
        self.record_origins("", &value, origin);
        if let toml::Value::Table(table) = value {
            deep_merge(&mut self.table, table);
        }
    }

    /// Sets `path` to `raw`, typed like the value `reference` holds at that path.
    fn set(
        &mut self,
        path: &[String],
        raw: &str,
        reference: &toml::Table,
        origin: &str,
    ) -> Result<()> {
        let dotted = path.join(".");
        if path.is_empty() || path.iter().any(|segment| segment.is_empty()) {
            return Err(ConfigError::BadKeyPath {
                key: dotted,
                origin: origin.to_string(),
            });
        }
        let current = lookup(&self.table, path).or_else(|| lookup(reference, path));
        let value = typed_value(raw, current).map_err(|message| ConfigError::InvalidValue {
            key: dotted.clone(),
            origin: origin.to_string(),
            message,
        })?;
        let mut table = &mut self.table;
        for segment in &path[..path.len() - 1] {
            let entry = table
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            table = entry.as_table_mut().expect("just made a table");
        }
        table.insert(path[path.len() - 1].clone(), value);
        self.origins.insert(dotted, origin.to_string());
        Ok(())
    }

    fn origin_of(&self, key: &str) -> String {
        // The key itself, else its nearest ancestor (a whole section set at once).
        let mut candidate = key;
        loop {
            if let Some(origin) = self.origins.get(candidate) {
                return origin.clone();
            }
            match candidate.rfind('.') {
                Some(position) => candidate = &candidate[..position],
                None => return "the config".to_string(),
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        lookup(&self.table, &path).is_some()
    }
}

/// A section's own validation error, under the section's name (its message names the field).
fn section_error(section: &str, err: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(section, err.to_string())
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    lookup(value.as_table()?, rest)
}

/// Merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn deep_merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(overlay_inner)) => {
                deep_merge(inner, overlay_inner);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn parse_toml_value(raw: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(&format!("value = {raw}")).ok()?;
    table.get("value").cloned()
}

/// Reads `raw` as the type of `current` (the value the key has now), see the module docs.
fn typed_value(raw: &str, current: Option<&toml::Value>) -> Result<toml::Value, String> {
    let trimmed = raw.trim();
    Ok(match current {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match trimmed {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => return Err(format!("`{other}` is not a boolean (true or false)")),
        }),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            trimmed
                .parse()
                .map_err(|_| format!("`{trimmed}` is not an integer"))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            trimmed
                .parse()
                .map_err(|_| format!("`{trimmed}` is not a number"))?,
        ),
        Some(toml::Value::Array(items)) => {
            if trimmed.starts_with('[') {
                return parse_toml_value(trimmed)
                    .filter(toml::Value::is_array)
                    .ok_or_else(|| format!("`{trimmed}` is not a TOML array"));
            }
            let element = items.first();
            let parts = trimmed
                .split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty());
            toml::Value::Array(
                parts
                    .map(|part| match element {
                        None | Some(toml::Value::String(_)) => {
                            Ok(toml::Value::String(part.to_string()))
                        }
                        Some(other) => typed_value(part, Some(other)),
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(toml::Value::Table(_)) => parse_toml_value(trimmed)
            .filter(toml::Value::is_table)
            .ok_or_else(|| {
                format!("`{trimmed}` is not an inline TOML table (`{{ key = value }}`)")
            })?,
        Some(toml::Value::Datetime(_)) | None => {
            parse_toml_value(trimmed).unwrap_or_else(|| toml::Value::String(raw.to_string()))
        }
    })
}

/// The message of serde's unknown-field error, split into the field and the rest.
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, tail) = rest.split_once('`')?;
    Some((
        field.to_string(),
        tail.trim_start_matches(',').trim().to_string(),
    ))
}

impl TgrpoConfig {
    /// Loads a run config: defaults, then `file`, then the `TGRPO_*` variables of `env`,
    /// then `overrides` (later layers win). Derived keys are filled in; the result is not
    /// validated (call [`TgrpoConfig::validate`]).
    pub fn load(file: Option<&Path>, env: &dyn EnvSource, overrides: &[Override]) -> Result<Self> {
        Self::load_over(&Self::default(), file, env, overrides)
    }

    /// Like [`TgrpoConfig::load`], with `base` in place of the defaults (the demo's
    /// config under `tgrpo local`, for instance).
    pub fn load_over(
        base: &TgrpoConfig,
        file: Option<&Path>,
        env: &dyn EnvSource,
        overrides: &[Override],
    ) -> Result<Self> {
        let mut layers = Layers::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let origin = path.display().to_string();
            let table: toml::Table = toml::from_str(&text).map_err(|err| ConfigError::Syntax {
                origin: origin.clone(),
                message: err.to_string(),
            })?;
            layers.merge_file(table, &origin);
        }
        Self::from_layers(base, layers, env, overrides)
    }

    /// Parses a TOML document (no environment, no overrides); `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            origin: origin.to_string(),
            message: err.to_string(),
        })?;
        let mut layers = Layers::default();
        layers.merge_file(table, origin);
        Self::from_layers(&Self::default(), layers, &NoEnv, &[])
    }

    fn from_layers(
        base: &TgrpoConfig,
        mut layers: Layers,
        env: &dyn EnvSource,
        overrides: &[Override],
    ) -> Result<Self> {
        let defaults = match toml::Value::try_from(base) {
            Ok(toml::Value::Table(table)) => table,
            other => unreachable!("a config serializes to a table: {other:?}"),
        };
        let mut variables = env.vars();
        variables.sort();
        for (name, value) in variables {
            if let Some(path) = key_for_env_var(&name) {
                layers.set(&path, &value, &defaults, &name)?;
            }
        }
        for setting in overrides {
            let path: Vec<String> = setting.key.split('.').map(str::to_string).collect();
            layers.set(&path, &setting.value, &defaults, &setting.origin)?;
        }
        for (key, source_key) in DERIVED_KEYS {
            if layers.contains(key) {
                return Err(ConfigError::DerivedKey {
                    key: key.to_string(),
                    source_key: source_key.to_string(),
                    origin: layers.origin_of(key),
                });
            }
        }
        let explicit: BTreeSet<String> = [
            "learner.prompts_path",
            "learner.prompts_format",
            "dual_source.teacher_traces_path",
        ]
        .into_iter()
        .filter(|key| layers.contains(key))
        .map(str::to_string)
        .collect();
        let mut merged = defaults;
        deep_merge(&mut merged, layers.table.clone());
        let mut config: Self = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|err| {
                let key = err.path().to_string();
                let message = err.inner().to_string();
                match unknown_field(&message) {
                    Some((field, expected)) => {
                        // The path points at the section holding the unknown field (or
                        // at the field itself, depending on where serde stopped).
                        let key = if key.ends_with(&field) {
                            key
                        } else if key == "." || key.is_empty() {
                            field
                        } else {
                            format!("{key}.{field}")
                        };
                        ConfigError::UnknownKey {
                            origin: layers.origin_of(&key),
                            key,
                            expected,
                        }
                    }
                    None => ConfigError::InvalidValue {
                        origin: layers.origin_of(&key),
                        key,
                        message,
                    },
                }
            })?;
        config.apply_derived(&explicit);
        Ok(config)
    }

    /// Copies the derived keys from their sources (see the module docs); keys in
    /// `explicit` were set by the user and are kept.
    fn apply_derived(&mut self, explicit: &BTreeSet<String>) {
        self.learner.model.clone_from(&self.model.source);
        self.learner.device.clone_from(&self.model.device);
        self.learner.dtype.clone_from(&self.model.dtype);
        self.learner.run_id.clone_from(&self.run_id);
        self.rollout.model.clone_from(&self.model.source);
        self.rollout.device.clone_from(&self.model.device);
        self.rollout.dtype.clone_from(&self.model.dtype);
        self.rollout.run_id.clone_from(&self.run_id);
        self.training.output_dir.clone_from(&self.output_dir);
        if !explicit.contains("learner.prompts_path") {
            self.learner.prompts_path = self.data.train_path();
        }
        if !explicit.contains("learner.prompts_format") {
            self.learner.prompts_format = PromptsFormat::Mbpp;
        }
        if !explicit.contains("dual_source.teacher_traces_path") {
            self.dual_source
                .teacher_traces_path
                .clone_from(&self.teacher.traces_path);
        }
    }

    /// [`sync_derived`](Self::sync_derived), and the learner's prompts and teacher traces
    /// follow this config's own data stage and synthesis outputs: for configs built in
    /// code that moved `data.output_dir` or `teacher.traces_path` (a loaded file decides
    /// those two keys itself).
    pub fn sync_derived_and_paths(&mut self) {
        self.sync_derived();
        self.learner.prompts_path = self.data.train_path();
        self.dual_source
            .teacher_traces_path
            .clone_from(&self.teacher.traces_path);
    }

    /// Re-derives the keys that always follow another (model, device, dtype, run id,
    /// output directory) after code changed a source field in place.
    pub fn sync_derived(&mut self) {
        let explicit: BTreeSet<String> = [
            "learner.prompts_path",
            "learner.prompts_format",
            "dual_source.teacher_traces_path",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        self.apply_derived(&explicit);
    }

    /// Checks every section and the rules that span sections; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.run_id.trim().is_empty() {
            return Err(ConfigError::invalid("run_id", "is empty"));
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("output_dir", "is empty"));
        }
        if self.model.source.trim().is_empty() {
            return Err(ConfigError::invalid("model.source", "is empty"));
        }
        let on_cpu = tgrpo_learner::config::parse_device_spec(&self.model.device)
            .map_err(|_| {
                ConfigError::invalid(
                    "model.device",
                    format!("`{}` is not cpu, cuda or cuda:N", self.model.device),
                )
            })?
            .is_none();
        tgrpo_learner::config::parse_dtype(&self.model.dtype, on_cpu).map_err(|_| {
            ConfigError::invalid(
                "model.dtype",
                format!("`{}` is not auto, f32, bf16 or f16", self.model.dtype),
            )
        })?;
        self.lora
            .validate()
            .map_err(|err| section_error("lora", err))?;
        self.data.validate()?;
        self.teacher
            .validate()
            .map_err(|err| section_error("teacher", err))?;
        self.synthesis.validate()?;
        self.executor
            .validate()
            .map_err(|err| section_error("executor", err))?;
        self.learner_config()
            .validate()
            .map_err(|err| section_error("learner", err))?;
        self.rollout
            .validate()
            .map_err(|err| section_error("rollout", err))?;
        self.broadcast
            .validate()
            .map_err(|err| section_error("broadcast", err))?;
        self.evaluation.validate()?;
        if self.local.rollout_workers == 0 {
            return Err(ConfigError::invalid(
                "local.rollout_workers",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The learner's four sections as the learner crate takes them.
    pub fn learner_config(&self) -> LearnerConfig {
        LearnerConfig {
            grpo: self.grpo.clone(),
            dual_source: self.dual_source.clone(),
            training: self.training.clone(),
            learner: self.learner.clone(),
        }
    }

    /// The whole config as TOML (what a run records next to its outputs), without the
    /// derived keys, so that the text loads back as a config file.
    pub fn to_toml_string(&self) -> String {
        let mut table = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(table)) => table,
            other => unreachable!("a config serializes to a table: {other:?}"),
        };
        let mut derived: Vec<&str> = DERIVED_KEYS.iter().map(|(key, _)| *key).collect();
        // Keys that follow their source unless set: left out when they do follow it.
        if self.learner.prompts_path == self.data.train_path()
            && self.learner.prompts_format == PromptsFormat::Mbpp
        {
            derived.extend(["learner.prompts_path", "learner.prompts_format"]);
        }
        if self.dual_source.teacher_traces_path == self.teacher.traces_path {
            derived.push("dual_source.teacher_traces_path");
        }
        for key in derived {
            if let Some((section, field)) = key.split_once('.')
                && let Some(toml::Value::Table(section)) = table.get_mut(section)
            {
                section.remove(field);
            }
        }
        toml::to_string(&table).expect("every section serializes to TOML")
    }

    /// Where the eval stage writes its results.
    pub fn evaluation_output(&self) -> PathBuf {
        self.evaluation
            .output
            .clone()
            .unwrap_or_else(|| self.output_dir.join("evaluation_results.json"))
    }

    /// The problems the eval stage reads.
    pub fn evaluation_data_path(&self) -> PathBuf {
        self.evaluation
            .data_path
            .clone()
            .unwrap_or_else(|| self.data.test_path())
    }

    /// The final adapter the train stage writes.
    pub fn final_model_dir(&self) -> PathBuf {
        self.output_dir.join("final_model")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_the_seeds() {
        let config = TgrpoConfig::default();
        config.validate().unwrap();
        assert_eq!(config.lora.r, 64);
        assert_eq!(config.lora.alpha, 128.0);
        assert_eq!(config.lora.dropout, 0.05);
        assert_eq!(config.lora.target_modules.len(), 7);
        assert_eq!(config.dual_source.alpha, 1.0);
        assert_eq!(config.dual_source.beta, 0.3);
        assert_eq!(config.dual_source.gamma, 0.2);
        assert_eq!(config.training.learning_rate, 5e-5);
        assert_eq!(config.grpo.epsilon, 0.2);
        assert_eq!(config.data.seed, 42);
        assert_eq!(config.data.train_fraction, 0.8);
        assert_eq!(config.data.output_dir, PathBuf::from("data"));
        assert_eq!(config.output_dir, PathBuf::from("outputs"));
        assert_eq!(config.evaluation.k, vec![1, 5, 10, 25, 50, 100]);
        assert_eq!(config.teacher.model_name, "Qwen/Qwen3-32B-FP8");
        // Derived keys agree with their sources.
        assert_eq!(config.learner.model, config.model.source);
        assert_eq!(config.rollout.model, config.model.source);
        assert_eq!(config.training.output_dir, config.output_dir);
        assert_eq!(
            config.learner.prompts_path,
            PathBuf::from("data/mbpp_train.jsonl")
        );
        assert_eq!(
            config.dual_source.teacher_traces_path,
            config.teacher.traces_path
        );
    }

    #[test]
    fn toml_round_trip() {
        let mut config = TgrpoConfig::default();
        config.training.max_steps = Some(7);
        config.evaluation.adapter = Some("outputs/final_model".into());
        config.model.source = "Qwen/Qwen2.5-Coder-0.5B-Instruct".into();
        config.sync_derived();
        let text = config.to_toml_string();
        assert!(!text.contains("[learner]\nmodel"), "{text}");
        let parsed = TgrpoConfig::from_toml_str(&text, "round trip").unwrap();
        assert_eq!(parsed, config);
        // An explicitly set prompt file survives the trip.
        config.learner.prompts_path = "elsewhere.jsonl".into();
        let parsed = TgrpoConfig::from_toml_str(&config.to_toml_string(), "again").unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        let err = TgrpoConfig::from_toml_str("[training]\nlearnig_rate = 1e-4\n", "run.toml")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown key training.learnig_rate"),
            "{err}"
        );
        assert!(err.to_string().contains("run.toml"), "{err}");

        let err = TgrpoConfig::from_toml_str("[rollout.scoring]\nreward = \"binary\"\n", "f")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key rollout.scoring.reward"),
            "{err}"
        );

        let err = TgrpoConfig::from_toml_str("outptu_dir = \"x\"\n", "f").unwrap_err();
        assert!(err.to_string().contains("unknown key outptu_dir"), "{err}");

        let err = TgrpoConfig::from_toml_str("[trainig]\nseed = 1\n", "f").unwrap_err();
        assert!(err.to_string().contains("unknown key trainig"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            TgrpoConfig::from_toml_str("[training]\nlearning_rate = \"fast\"\n", "f").unwrap_err();
        assert!(err.to_string().contains("training.learning_rate"), "{err}");
        let err = TgrpoConfig::from_toml_str("[data]\nsource = \"ftp\"\n", "f").unwrap_err();
        assert!(err.to_string().contains("data.source"), "{err}");
        let err = TgrpoConfig::from_toml_str("[training\n", "broken.toml").unwrap_err();
        assert!(err.to_string().contains("broken.toml"), "{err}");
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let config = TgrpoConfig::from_toml_str(
            "run_id = \"exp1\"\n[lora]\nr = 16\n[grpo]\nnum_generations = 4\n[model]\nsource = \"Qwen/Qwen2.5-Coder-0.5B-Instruct@abc123\"\n",
            "f",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.lora.r, 16);
        assert_eq!(config.lora.alpha, 128.0);
        assert_eq!(config.grpo.num_generations, 4);
        assert_eq!(config.grpo.epsilon, 0.2);
        assert_eq!(config.learner.run_id, "exp1");
        assert_eq!(config.rollout.run_id, "exp1");
        assert_eq!(
            config.rollout.model,
            "Qwen/Qwen2.5-Coder-0.5B-Instruct@abc123"
        );
    }

    #[test]
    fn derived_keys_cannot_be_set_and_say_what_to_set() {
        let err = TgrpoConfig::from_toml_str("[learner]\nmodel = \"x\"\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("learner.model") && err.contains("model.source"),
            "{err}"
        );
        let err = TgrpoConfig::load(None, &env(&[("TGRPO_TRAINING__OUTPUT_DIR", "x")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("training.output_dir") && err.contains("TGRPO_TRAINING__OUTPUT_DIR"),
            "{err}"
        );
    }

    #[test]
    fn paths_follow_their_sources_unless_set() {
        let config = TgrpoConfig::from_toml_str(
            "output_dir = \"runs/a\"\n[data]\noutput_dir = \"d\"\n[teacher]\ntraces_path = \"d/t.jsonl\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(config.training.output_dir, PathBuf::from("runs/a"));
        assert_eq!(
            config.learner.prompts_path,
            PathBuf::from("d/mbpp_train.jsonl")
        );
        assert_eq!(
            config.dual_source.teacher_traces_path,
            PathBuf::from("d/t.jsonl")
        );
        assert_eq!(
            config.evaluation_data_path(),
            PathBuf::from("d/mbpp_test.jsonl")
        );
        assert_eq!(
            config.evaluation_output(),
            PathBuf::from("runs/a/evaluation_results.json")
        );
        let config = TgrpoConfig::from_toml_str(
            "[learner]\nprompts_path = \"p.jsonl\"\nprompts_format = \"problems\"\n[dual_source]\nteacher_traces_path = \"t.jsonl\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(config.learner.prompts_path, PathBuf::from("p.jsonl"));
        assert_eq!(config.learner.prompts_format, PromptsFormat::Problems);
        assert_eq!(
            config.dual_source.teacher_traces_path,
            PathBuf::from("t.jsonl")
        );
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "[training]\nlearning_rate = 3e-4\nseed = 1\n[model]\ndevice = \"cuda\"\n",
        )
        .unwrap();
        let variables = env(&[
            ("TGRPO_TRAINING__LEARNING_RATE", "1e-4"),
            ("TGRPO_TRAINING__MAX_STEPS", "12"),
            ("TGRPO_MODEL__DEVICE", "cuda:1"),
            (
                "TGRPO_ROLLOUT__EXECUTOR_ENDPOINTS",
                "exec-0:50051, exec-1:50051",
            ),
            ("TGRPO_ROLLOUT__SCORING__REWARD_KIND", "scaled"),
            ("TGRPO_GRPO__SCALE_REWARDS", "false"),
            ("TGRPO_EVALUATION__K", "1,2"),
            ("TGRPO_EVALUATION__NUM_SAMPLES", "2"),
            ("TGRPO_RUN_ID", "run-7"),
            ("TGRPO_LORA__TARGET_MODULES", "[\"q_proj\", \"v_proj\"]"),
            // Flag variables of subcommands: not config keys, ignored here.
            ("TGRPO_EXECUTOR_ENDPOINTS", "elsewhere:1"),
            ("TGRPO_NO_PROGRESS", "1"),
            ("PATH", "/usr/bin"),
        ]);
        let overrides = [
            Override::new("output_dir", "/tmp/out", "--output-dir"),
            Override::new("training.seed", 5, "--seed"),
        ];
        let config = TgrpoConfig::load(Some(&path), &variables, &overrides).unwrap();
        config.validate().unwrap();
        assert_eq!(config.training.learning_rate, 1e-4);
        assert_eq!(config.training.max_steps, Some(12));
        assert_eq!(config.training.seed, 5);
        assert_eq!(config.model.device, "cuda:1");
        assert_eq!(config.learner.device, "cuda:1");
        assert_eq!(
            config.rollout.executor_endpoints,
            vec!["exec-0:50051".to_string(), "exec-1:50051".to_string()]
        );
        assert_eq!(
            config.rollout.scoring.reward_kind,
            tgrpo_rollout::RewardKind::Scaled
        );
        assert!(!config.grpo.scale_rewards);
        assert_eq!(config.evaluation.k, vec![1, 2]);
        assert_eq!(config.run_id, "run-7");
        assert_eq!(config.rollout.run_id, "run-7");
        assert_eq!(config.lora.target_modules.len(), 2);
        assert_eq!(config.output_dir, PathBuf::from("/tmp/out"));
        assert_eq!(config.training.output_dir, PathBuf::from("/tmp/out"));
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let err = TgrpoConfig::load(None, &env(&[("TGRPO_TRAINING__LEARNIG_RATE", "1")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown key training.learnig_rate")
                && err.contains("TGRPO_TRAINING__LEARNIG_RATE"),
            "{err}"
        );
        let err = TgrpoConfig::load(None, &env(&[("TGRPO_TRAINING__SEED", "many")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("training.seed") && err.contains("TGRPO_TRAINING__SEED"),
            "{err}"
        );
        let err = TgrpoConfig::load(None, &env(&[("TGRPO_NOSUCH__KEY", "1")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key nosuch"), "{err}");
        let err = TgrpoConfig::load(None, &env(&[("TGRPO_GRPO__", "1")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TGRPO_GRPO__"), "{err}");
    }

    #[test]
    fn option_keys_take_numbers_and_strings() {
        let config = TgrpoConfig::load(
            None,
            &env(&[
                ("TGRPO_GRPO__EPSILON_HIGH", "0.28"),
                ("TGRPO_TEACHER__SYSTEM_PROMPT", "Think first."),
                ("TGRPO_EVALUATION__ADAPTER", "outputs/final_model"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(config.grpo.epsilon_high, Some(0.28));
        assert_eq!(
            config.teacher.system_prompt.as_deref(),
            Some("Think first.")
        );
        assert_eq!(
            config.evaluation.adapter,
            Some(PathBuf::from("outputs/final_model"))
        );
    }

    #[test]
    fn env_var_names_and_key_paths_correspond() {
        assert_eq!(
            env_var_for("training.learning_rate"),
            "TGRPO_TRAINING__LEARNING_RATE"
        );
        assert_eq!(
            key_for_env_var("TGRPO_ROLLOUT__SCORING__REWARD_KIND").unwrap(),
            vec!["rollout", "scoring", "reward_kind"]
        );
        assert_eq!(key_for_env_var("TGRPO_RUN_ID").unwrap(), vec!["run_id"]);
        assert_eq!(key_for_env_var("TGRPO_EXECUTOR_ENDPOINTS"), None);
        assert_eq!(key_for_env_var("HOME"), None);
    }

    #[test]
    fn validate_cross_checks() {
        let mut config = TgrpoConfig::default();
        config.evaluation.num_samples = 10;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("evaluation.k") && err.contains("k = 25"),
            "{err}"
        );
        config.evaluation.k = vec![1, 5, 10];
        config.validate().unwrap();

        let mut config = TgrpoConfig::default();
        config.data.source = DataSource::Path;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("data.path")
        );

        let mut config = TgrpoConfig::default();
        config.synthesis.teacher = TeacherKind::Local;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("synthesis.local_model")
        );

        let mut config = TgrpoConfig::default();
        config.model.device = "tpu".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("model.device")
        );

        let mut config = TgrpoConfig::default();
        config.training.learning_rate = -1.0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("training.learning_rate")
        );

        let mut config = TgrpoConfig::default();
        config.lora.r = 0;
        assert!(config.validate().unwrap_err().to_string().contains("lora"));

        let mut config = TgrpoConfig::default();
        config.evaluation.dataset = EvalDataset::Humaneval;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("evaluation.data_path")
        );
    }
}
