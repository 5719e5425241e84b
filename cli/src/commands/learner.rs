//! `tgrpo learner`: the learner role. Serves prompts to rollout workers, takes their scored
//! groups, trains the LoRA adapter with the composite objective, checkpoints, publishes
//! every new adapter over NATS, and exits when every epoch is trained (or on
//! SIGINT/SIGTERM, after writing a checkpoint that `--resume` continues from).
//!
//! Settings: the run config (`--config FILE`, every section, as all roles read it) or a
//! learner-only TOML file (`--learner-config`: its `[grpo]`, `[dual_source]`,
//! `[training]`, `[learner]`, `[lora]` and `[broadcast]` sections; other sections are
//! left to the other roles), then each flag or `TGRPO_*` variable given overrides one
//! field.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tgrpo_broadcast::BroadcastConfig;
use tgrpo_learner::{LearnerConfig, PromptsFormat, StopReason};
use tgrpo_policy::LoraConfig;
use tokio::net::TcpListener;

/// Arguments of `tgrpo learner`.
#[derive(Debug, Args)]
pub struct LearnerArgs {
    /// TOML file with the learner's sections (`[grpo]`, `[dual_source]`, `[training]`,
    /// `[learner]`, `[lora]`, `[broadcast]`); unknown keys in them are errors.
    #[arg(long = "learner-config", env = "TGRPO_LEARNER_CONFIG")]
    pub config: Option<PathBuf>,

    /// The run config: one TOML file with every section (what every role and `tgrpo all`
    /// read; `TGRPO_SECTION__KEY` variables override it). The learner takes `[model]`,
    /// `[lora]`, `[grpo]`, `[dual_source]`, `[training]`, `[learner]` and `[broadcast]`;
    /// the flags below override it.
    #[arg(long = "config", env = "TGRPO_CONFIG", conflicts_with = "config")]
    pub run_config: Option<PathBuf>,

    /// Address to serve the gRPC `Learner` API on.
    #[arg(long, env = "TGRPO_LEARNER_LISTEN", default_value = "0.0.0.0:50052")]
    pub listen: String,

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

    /// The training problems handed to rollout workers [default: data/mbpp_train.jsonl].
    #[arg(long, env = "TGRPO_LEARNER_PROMPTS")]
    pub prompts: Option<PathBuf>,

    /// Format of the prompts file: `mbpp`, `humaneval` or `problems` [default: mbpp].
    #[arg(long, env = "TGRPO_LEARNER_PROMPTS_FORMAT")]
    pub prompts_format: Option<String>,

    /// Teacher traces for the teacher-SFT term [default: data/synthetic_traces.jsonl].
    #[arg(long, env = "TGRPO_TEACHER_TRACES")]
    pub traces: Option<PathBuf>,

    /// Checkpoints, metrics.jsonl and final_model/ go here [default: outputs].
    #[arg(long, env = "TGRPO_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// Continue from the newest checkpoint in the output directory.
    #[arg(long, env = "TGRPO_RESUME")]
    pub resume: bool,

    /// Passes over the prompt set [default: 1].
    #[arg(long, env = "TGRPO_EPOCHS")]
    pub epochs: Option<usize>,

    /// Stop after this many optimizer steps.
    #[arg(long, env = "TGRPO_MAX_STEPS")]
    pub max_steps: Option<usize>,

    /// Seed of the data order, teacher order, adapter init and LoRA dropout [default: 42].
    #[arg(long, env = "TGRPO_SEED")]
    pub seed: Option<u64>,

    /// The run whose adapters are broadcast [default: tgrpo].
    #[arg(long, env = "TGRPO_RUN_ID")]
    pub run_id: Option<String>,

    /// NATS server(s) of the adapter broadcast [default: nats://127.0.0.1:4222].
    #[arg(long, env = "TGRPO_NATS_URL")]
    pub nats_url: Option<String>,

    /// Publish no adapters (workers then sample with the base model throughout).
    #[arg(long, env = "TGRPO_LEARNER_NO_BROADCAST")]
    pub no_broadcast: bool,
}

/// The sections the learner reads.
#[derive(Debug)]
struct Settings {
    learner: LearnerConfig,
    lora: LoraConfig,
    broadcast: Option<BroadcastConfig>,
}

impl LearnerArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let (mut learner, lora, broadcast) = match (&self.run_config, &self.config) {
            (Some(path), _) => {
                let run = super::run_config::load_run_config(path)?;
                (
                    run.learner_config(),
                    run.lora.clone(),
                    Some(run.broadcast.clone()),
                )
            }
            (None, Some(path)) => read_config(path)?,
            (None, None) => (LearnerConfig::default(), LoraConfig::default(), None),
        };
        let service = &mut learner.learner;
        if let Some(model) = &self.model {
            service.model.clone_from(model);
        }
        if let Some(device) = &self.device {
            service.device.clone_from(device);
        }
        if let Some(dtype) = &self.dtype {
            service.dtype.clone_from(dtype);
        }
        if let Some(prompts) = &self.prompts {
            service.prompts_path.clone_from(prompts);
        }
        if let Some(format) = &self.prompts_format {
            service.prompts_format = match format.as_str() {
                "mbpp" => PromptsFormat::Mbpp,
                "humaneval" => PromptsFormat::Humaneval,
                "problems" => PromptsFormat::Problems,
                other => {
                    anyhow::bail!("--prompts-format `{other}` is not mbpp, humaneval or problems")
                }
            };
        }
        if let Some(run_id) = &self.run_id {
            service.run_id.clone_from(run_id);
        }
        if let Some(traces) = &self.traces {
            learner.dual_source.teacher_traces_path.clone_from(traces);
        }
        let training = &mut learner.training;
        if let Some(output_dir) = &self.output_dir {
            training.output_dir.clone_from(output_dir);
        }
        if self.resume {
            training.resume = true;
        }
        if let Some(epochs) = self.epochs {
            training.epochs = epochs;
        }
        if self.max_steps.is_some() {
            training.max_steps = self.max_steps;
        }
        if let Some(seed) = self.seed {
            training.seed = seed;
        }
        learner.validate()?;
        lora.validate()?;
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
        Ok(Settings {
            learner,
            lora,
            broadcast,
        })
    }
}

fn read_config(
    path: &PathBuf,
) -> anyhow::Result<(LearnerConfig, LoraConfig, Option<BroadcastConfig>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read learner config {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    // The learner's own four sections go through one struct, so unknown keys in them are
    // named; the rest of the file belongs to other roles.
    let mut own = toml::Table::new();
    for name in ["grpo", "dual_source", "training", "learner"] {
        if let Some(section) = table.remove(name) {
            own.insert(name.to_string(), section);
        }
    }
    let learner: LearnerConfig = toml::Value::Table(own)
        .try_into()
        .with_context(|| format!("{}: invalid learner section", path.display()))?;
    let lora = match table.remove("lora") {
        Some(section) => section
            .try_into()
            .with_context(|| format!("{}: invalid [lora] section", path.display()))?,
        None => LoraConfig::default(),
    };
    let broadcast = match table.remove("broadcast") {
        Some(section) => Some(
            section
                .try_into()
                .with_context(|| format!("{}: invalid [broadcast] section", path.display()))?,
        ),
        None => None,
    };
    Ok((learner, lora, broadcast))
}

/// Binds, loads everything and trains until the run ends or a shutdown signal.
pub async fn run(args: LearnerArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", args.listen))?;
    let shutdown = crate::shutdown::on_signal();
    let summary = tgrpo_learner::run(
        &settings.learner,
        &settings.lora,
        settings.broadcast.as_ref(),
        listener,
        shutdown,
    )
    .await?;
    let reason = match summary.reason {
        StopReason::Completed => "every epoch trained",
        StopReason::MaxSteps => "max_steps reached",
        StopReason::Shutdown => "shutdown (resume with --resume)",
    };
    println!(
        "learner stopped ({reason}) at step {}, adapter v{}; {} groups accepted, {} stale, {} duplicate, {} rejected; checkpoint {}; final adapter {}",
        summary.steps,
        summary.adapter_version,
        summary.counters.accepted,
        summary.counters.dropped_stale,
        summary.counters.duplicates,
        summary.counters.rejected,
        summary
            .last_checkpoint
            .as_ref()
            .map_or_else(|| "none".to_string(), |path| path.display().to_string()),
        summary
            .final_model
            .as_ref()
            .map_or_else(|| "none".to_string(), |path| path.display().to_string()),
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
        learner: LearnerArgs,
    }

    fn parse(args: &[&str]) -> LearnerArgs {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .unwrap()
            .learner
    }

    #[test]
    fn no_flags_give_the_production_defaults() {
        let settings = parse(&[]).settings().unwrap();
        assert_eq!(settings.learner, LearnerConfig::default());
        assert_eq!(settings.lora, LoraConfig::default());
        assert_eq!(settings.broadcast, Some(BroadcastConfig::default()));
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "[grpo]\nepsilon_high = 0.28\n[training]\nseed = 3\nepochs = 2\n[lora]\nr = 16\nalpha = 32.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n[rollout]\nworker_id = \"not ours\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let settings = parse(&[
            "--learner-config",
            path,
            "--seed",
            "9",
            "--resume",
            "--no-broadcast",
        ])
        .settings()
        .unwrap();
        assert_eq!(settings.learner.grpo.epsilon_high(), 0.28);
        assert_eq!(settings.learner.training.seed, 9);
        assert_eq!(settings.learner.training.epochs, 2);
        assert!(settings.learner.training.resume);
        assert_eq!(settings.lora.r, 16);
        assert_eq!(settings.broadcast, None);
    }

    #[test]
    fn the_run_config_supplies_every_learner_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "run_id = \"exp\"\noutput_dir = \"out\"\n[model]\nsource = \"org/model\"\n[lora]\nr = 8\n[training]\nseed = 3\n[broadcast]\nurl = \"nats://nats:4222\"\n[rollout]\nworker_id = \"not ours\"\n",
        )
        .unwrap();
        let settings = parse(&["--config", path.to_str().unwrap(), "--seed", "9"])
            .settings()
            .unwrap();
        assert_eq!(settings.learner.learner.model, "org/model");
        assert_eq!(settings.learner.learner.run_id, "exp");
        assert_eq!(settings.learner.training.output_dir, PathBuf::from("out"));
        assert_eq!(settings.learner.training.seed, 9);
        assert_eq!(settings.lora.r, 8);
        assert_eq!(settings.broadcast.unwrap().url, "nats://nats:4222");
        std::fs::write(&path, "[training]\nlearnig_rate = 1.0\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()])
            .settings()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown key training.learnig_rate"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[training]\nlearning_rat = 1e-4\n").unwrap();
        let err = parse(&["--learner-config", path.to_str().unwrap()])
            .settings()
            .unwrap_err();
        assert!(format!("{err:#}").contains("learning_rat"), "{err:#}");
        let err = parse(&["--device", "tpu"]).settings().unwrap_err();
        assert!(err.to_string().contains("learner.device"), "{err}");
        let err = parse(&["--prompts-format", "csv"]).settings().unwrap_err();
        assert!(err.to_string().contains("csv"), "{err}");
    }
}
