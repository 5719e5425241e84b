//! `tgrpo rollout`: a rollout worker. Leases prompts from the learner, samples a group of
//! completions per prompt with the newest adapter from the broadcast, scores them with
//! executors (remote, or an in-process sandbox pool), streams the scored groups back, and
//! exits when the learner says the run is finished (or on SIGINT/SIGTERM).
//!
//! Settings: the run config (`--config FILE`, every section, as all roles read it) or a
//! rollout-only TOML file (`--rollout-config`: its `[rollout]` section, plus
//! `[broadcast]` and `[executor]` when present), then each flag or `TGRPO_*` variable
//! given overrides one field.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tgrpo_broadcast::BroadcastConfig;
use tgrpo_executor::ExecutorConfig;
use tgrpo_rollout::{RewardKind, RolloutConfig, WorkerExit};

use super::sandbox_args::SandboxArgs;

/// Arguments of `tgrpo rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// TOML file with a `[rollout]` section (and optionally `[broadcast]`, `[executor]`);
    /// unknown keys are errors.
    #[arg(long = "rollout-config", env = "TGRPO_ROLLOUT_CONFIG")]
    pub config: Option<PathBuf>,

    /// The run config: one TOML file with every section (what every role and `tgrpo all`
    /// read; `TGRPO_SECTION__KEY` variables override it). The worker takes `[model]`,
    /// `[rollout]`, `[broadcast]` and `[executor]`; the flags below override it.
    #[arg(long = "config", env = "TGRPO_CONFIG", conflicts_with = "config")]
    pub run_config: Option<PathBuf>,

    /// The learner's gRPC address [default: http://127.0.0.1:50052].
    #[arg(long, env = "TGRPO_LEARNER_ENDPOINT")]
    pub learner_endpoint: Option<String>,

    /// This worker's name in the learner's logs [default: HOSTNAME-PID].
    #[arg(long, env = "TGRPO_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Remote executors (`host:port`, comma-separated); without any, an in-process
    /// sandbox pool scores.
    #[arg(long, env = "TGRPO_EXECUTOR_ENDPOINTS", value_delimiter = ',')]
    pub executor_endpoints: Vec<String>,

    /// The base model: an HF directory, a `.gguf` file, or `org/name[@revision]`
    /// [default: Qwen/Qwen2.5-Coder-1.5B-Instruct].
    #[arg(long, env = "TGRPO_MODEL")]
    pub model: Option<String>,

    /// `cpu`, `cuda` or `cuda:N` [default: cpu].
    #[arg(long, env = "TGRPO_DEVICE")]
    pub device: Option<String>,

    /// `auto`, `f32`, `bf16` or `f16` [default: auto].
    #[arg(long, env = "TGRPO_DTYPE")]
    pub dtype: Option<String>,

    /// Prompts asked for per lease; 0 takes the learner's maximum [default: 0].
    #[arg(long, env = "TGRPO_ROLLOUT_MAX_PROMPTS_PER_LEASE")]
    pub max_prompts_per_lease: Option<usize>,

    /// Most sequences generated in one batch [default: 64].
    #[arg(long, env = "TGRPO_ROLLOUT_MAX_BATCH_SEQUENCES")]
    pub max_batch_sequences: Option<usize>,

    /// `binary`, `partial` or `scaled` [default: binary].
    #[arg(long, env = "TGRPO_REWARD_KIND")]
    pub reward_kind: Option<RewardKind>,

    /// Wall-clock limit of one execution, in seconds [default: the executor's].
    #[arg(long, env = "TGRPO_EXECUTION_TIMEOUT_S")]
    pub execution_timeout_s: Option<f64>,

    /// Run seed of the sampling streams [default: 42].
    #[arg(long, env = "TGRPO_SEED")]
    pub seed: Option<u64>,

    /// The run whose adapters to follow [default: tgrpo].
    #[arg(long, env = "TGRPO_RUN_ID")]
    pub run_id: Option<String>,

    /// NATS server(s) of the adapter broadcast [default: nats://127.0.0.1:4222].
    #[arg(long, env = "TGRPO_NATS_URL")]
    pub nats_url: Option<String>,

    /// Sample with the base model only: do not follow the adapter broadcast.
    #[arg(long, env = "TGRPO_ROLLOUT_NO_BROADCAST")]
    pub no_broadcast: bool,

    /// First retry delay while the learner, executors or NATS are away, in ms [default: 200].
    #[arg(long, env = "TGRPO_ROLLOUT_BACKOFF_INITIAL_MS")]
    pub backoff_initial_ms: Option<u64>,

    /// Largest retry delay, in ms [default: 10000].
    #[arg(long, env = "TGRPO_ROLLOUT_BACKOFF_MAX_MS")]
    pub backoff_max_ms: Option<u64>,

    /// Seconds to wait for the learner's newer adapter before sampling with an older one
    /// [default: 30].
    #[arg(long, env = "TGRPO_ROLLOUT_ADAPTER_WAIT_S")]
    pub adapter_wait_s: Option<f64>,

    /// Deadline of one SubmitGroups call, in seconds [default: 600].
    #[arg(long, env = "TGRPO_ROLLOUT_SUBMIT_TIMEOUT_S")]
    pub submit_timeout_s: Option<f64>,

    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The three sections a worker reads.
struct Settings {
    rollout: RolloutConfig,
    broadcast: Option<BroadcastConfig>,
    executor: ExecutorConfig,
}

impl RolloutArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let (mut rollout, broadcast, executor) = match (&self.run_config, &self.config) {
            (Some(path), _) => {
                let run = super::run_config::load_run_config(path)?;
                (
                    run.rollout.clone(),
                    Some(run.broadcast.clone()),
                    // Sandbox flags given on the command line still win.
                    Some(self.sandbox.over(run.executor.clone())),
                )
            }
            (None, Some(path)) => read_config(path)?,
            (None, None) => (RolloutConfig::default(), None, None),
        };
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                field.clone_from(value);
            }
        };
        set(&mut rollout.learner_endpoint, &self.learner_endpoint);
        set(&mut rollout.worker_id, &self.worker_id);
        set(&mut rollout.model, &self.model);
        set(&mut rollout.device, &self.device);
        set(&mut rollout.dtype, &self.dtype);
        set(&mut rollout.run_id, &self.run_id);
        if !self.executor_endpoints.is_empty() {
            rollout
                .executor_endpoints
                .clone_from(&self.executor_endpoints);
        }
        if let Some(value) = self.max_prompts_per_lease {
            rollout.max_prompts_per_lease = value;
        }
        if let Some(value) = self.max_batch_sequences {
            rollout.max_batch_sequences = value;
        }
        if let Some(value) = self.reward_kind {
            rollout.scoring.reward_kind = value;
        }
        if self.execution_timeout_s.is_some() {
            rollout.scoring.execution_timeout_s = self.execution_timeout_s;
        }
        if let Some(value) = self.seed {
            rollout.seed = value;
        }
        if let Some(value) = self.backoff_initial_ms {
            rollout.backoff.initial_ms = value;
        }
        if let Some(value) = self.backoff_max_ms {
            rollout.backoff.max_ms = value;
        }
        if let Some(value) = self.adapter_wait_s {
            rollout.adapter_wait_s = value;
        }
        if let Some(value) = self.submit_timeout_s {
            rollout.submit_timeout_s = value;
        }
        rollout.validate()?;
        let broadcast = if self.no_broadcast {
            None
        } else {
            let mut broadcast = broadcast.unwrap_or_default();
            if let Some(url) = &self.nats_url {
                broadcast.url.clone_from(url);
            }
            broadcast.validate()?;
            Some(broadcast)
        };
        // Flags describe the local pool; a file's [executor] section replaces them.
        let executor = executor.unwrap_or_else(|| self.sandbox.to_config());
        Ok(Settings {
            rollout,
            broadcast,
            executor,
        })
    }
}

type Sections = (
    RolloutConfig,
    Option<BroadcastConfig>,
    Option<ExecutorConfig>,
);

fn read_config(path: &Path) -> anyhow::Result<Sections> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rollout config {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    fn section<T: serde::de::DeserializeOwned>(
        table: &mut toml::Table,
        name: &str,
        path: &Path,
    ) -> anyhow::Result<Option<T>> {
        match table.remove(name) {
            Some(toml::Value::Table(section)) => section
                .try_into()
                .map(Some)
                .with_context(|| format!("{}: invalid [{name}] section", path.display())),
            Some(_) => anyhow::bail!("{}: `{name}` is not a table", path.display()),
            None => Ok(None),
        }
    }
    let rollout = section(&mut table, "rollout", path)?.unwrap_or_default();
    let broadcast = section(&mut table, "broadcast", path)?;
    let executor = section(&mut table, "executor", path)?;
    Ok((rollout, broadcast, executor))
}

/// Works until the learner finishes the run or a shutdown signal.
pub async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let shutdown = crate::shutdown::on_signal();
    let summary = tgrpo_rollout::run(
        &settings.rollout,
        &settings.executor,
        settings.broadcast.as_ref(),
        shutdown,
    )
    .await?;
    let stats = &summary.stats;
    let reason = match summary.exit {
        WorkerExit::Finished => "the learner finished the run",
        WorkerExit::Shutdown => "shutdown",
    };
    println!(
        "rollout worker stopped ({reason}) after {:.1}s: {} groups accepted, {} duplicate, {} stale, {} rejected, {} abandoned; {} completions, {} tokens; adapter {}",
        summary.wall_s,
        stats.accepted,
        stats.duplicates,
        stats.stale,
        stats.rejected,
        stats.abandoned,
        stats.completions,
        stats.generated_tokens,
        stats.adapter_version.map_or_else(
            || "none (base model)".to_string(),
            |version| format!("v{version}")
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        rollout: RolloutArgs,
    }

    fn parse(args: &[&str]) -> RolloutArgs {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .unwrap()
            .rollout
    }

    #[test]
    fn no_flags_give_the_production_defaults() {
        let settings = parse(&[]).settings().unwrap();
        assert_eq!(settings.rollout, RolloutConfig::default());
        assert_eq!(settings.broadcast, Some(BroadcastConfig::default()));
        assert_eq!(settings.executor, ExecutorConfig::default());
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "[rollout]\nworker_id = \"from-file\"\nmax_batch_sequences = 8\nseed = 3\n[broadcast]\nurl = \"nats://file:4222\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let settings = parse(&[
            "--rollout-config",
            path,
            "--seed",
            "9",
            "--executor-endpoints",
            "a:1,b:2",
            "--reward-kind",
            "scaled",
        ])
        .settings()
        .unwrap();
        assert_eq!(settings.rollout.worker_id, "from-file");
        assert_eq!(settings.rollout.max_batch_sequences, 8);
        assert_eq!(settings.rollout.seed, 9);
        assert_eq!(settings.rollout.executor_endpoints, vec!["a:1", "b:2"]);
        assert_eq!(settings.rollout.scoring.reward_kind, RewardKind::Scaled);
        assert_eq!(settings.broadcast.unwrap().url, "nats://file:4222");
        let off = parse(&["--rollout-config", path, "--no-broadcast"])
            .settings()
            .unwrap();
        assert_eq!(off.broadcast, None);
    }

    #[test]
    fn the_run_config_supplies_the_worker_sections_and_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "run_id = \"exp\"\n[model]\nsource = \"org/model\"\ndevice = \"cuda:1\"\n[rollout]\nlearner_endpoint = \"learner:50052\"\n[executor]\nslots = 3\n[broadcast]\nurl = \"nats://nats:4222\"\n[training]\nseed = 1\n",
        )
        .unwrap();
        let settings = parse(&["--config", path.to_str().unwrap(), "--worker-id", "w2"])
            .settings()
            .unwrap();
        assert_eq!(settings.rollout.model, "org/model");
        assert_eq!(settings.rollout.device, "cuda:1");
        assert_eq!(settings.rollout.run_id, "exp");
        assert_eq!(settings.rollout.learner_endpoint, "learner:50052");
        assert_eq!(settings.rollout.worker_id, "w2");
        assert_eq!(settings.executor.slots, 3);
        assert_eq!(settings.broadcast.unwrap().url, "nats://nats:4222");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[rollout]\nmax_batch = 8\n").unwrap();
        let err = parse(&["--rollout-config", path.to_str().unwrap()])
            .settings()
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("max_batch"), "{err:#}");
        let err = parse(&["--max-batch-sequences", "0"])
            .settings()
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("rollout.max_batch_sequences"),
            "{err}"
        );
        assert!(
            Probe::try_parse_from(["probe", "--reward-kind", "lots"])
                .unwrap_err()
                .to_string()
                .contains("lots")
        );
    }
}
