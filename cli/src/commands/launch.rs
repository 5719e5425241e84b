//! `tgrpo launch`: distributed mode on one host. Starts a nats-server, M executors, the
//! teacher proxy, the learner and N rollout workers as separate processes (this same
//! binary, one role each) from one run config, supervises them (restarts, the learner
//! with `--resume`) and stops them in order; exits with the learner's status.
//!
//! Before the services start, the launch prepares what they read: the data stage when
//! the learner's prompts are its output, the synthesis stage when the teacher-SFT term is
//! on and no traces exist, the demo model when `[model] source = "builtin:demo"`.
//! Everything a launch writes besides the run's outputs is under `OUTPUT_DIR/launch/`:
//! `config.toml` (what every service reads), `processes.json` (pids, endpoints,
//! restarts), `logs/SERVICE.log`, and `nats/` (the JetStream store).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tgrpo_launcher::{LaunchOptions, NatsMode};
use tgrpo_pipeline::config::{Override, TgrpoConfig};

use super::run_config::{ConfigArgs, teacher_api_key};

/// Arguments of `tgrpo launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Rollout worker processes.
    #[arg(long, default_value_t = 2)]
    pub rollout_workers: usize,

    /// Executor processes.
    #[arg(long, default_value_t = 2)]
    pub executors: usize,

    /// Sandbox slots per executor [default: the config's `[executor] slots`].
    #[arg(long)]
    pub executor_slots: Option<usize>,

    /// Do not start the teacher proxy (training reads the teacher's traces from the file
    /// the synthesis stage wrote; the proxy serves on-line requests only).
    #[arg(long)]
    pub no_teacher_proxy: bool,

    /// Use this NATS server (JetStream enabled) instead of starting one.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,

    /// The nats-server binary to start [default: $NATS_SERVER, /usr/sbin/nats-server,
    /// or nats-server on PATH].
    #[arg(long, value_name = "PATH", conflicts_with = "nats_url")]
    pub nats_server: Option<PathBuf>,

    /// Continue an unfinished run from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,

    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,

    /// Restarts allowed per service after it crashed (a crashed learner restarts with
    /// --resume). A service out of restarts with no live sibling of its role ends the run.
    #[arg(long, default_value_t = 3)]
    pub max_restarts: u32,

    /// Seconds a service may take to report healthy.
    #[arg(long, default_value_t = 600.0)]
    pub ready_timeout_s: f64,

    /// Seconds a service may take to stop after SIGTERM before it is killed.
    #[arg(long, default_value_t = 60.0)]
    pub stop_grace_s: f64,

    /// Serve Prometheus `/metrics` from every service, each on a loopback port of its own
    /// (printed at start and listed in OUTPUT_DIR/launch/processes.json).
    #[arg(long)]
    pub service_metrics: bool,

    /// Do not copy the services' output to this terminal (it stays in
    /// OUTPUT_DIR/launch/logs/).
    #[arg(long)]
    pub quiet: bool,
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| anyhow::anyhow!("{flag} {value}: expected a positive number of seconds"))
}

/// Prepares the run, starts every service and supervises them until the learner is done.
pub async fn run(args: LaunchArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if args.resume {
        overrides.push(Override::new("training.resume", true, "--resume"));
    }
    if let Some(steps) = args.max_steps {
        overrides.push(Override::new("training.max_steps", steps, "--max-steps"));
    }
    let config = args.config.load(&TgrpoConfig::default(), overrides)?;
    let binary = std::env::current_exe()
        .map_err(|err| anyhow::anyhow!("cannot tell where the tgrpo binary is: {err}"))?;
    let mut options = LaunchOptions::new(binary);
    options.rollout_workers = args.rollout_workers;
    options.executors = args.executors;
    options.executor_slots = args.executor_slots.unwrap_or(0);
    options.teacher_proxy = !args.no_teacher_proxy;
    options.resume = args.resume;
    options.max_restarts = args.max_restarts;
    options.ready_timeout = seconds("--ready-timeout-s", args.ready_timeout_s)?;
    options.stop_grace = seconds("--stop-grace-s", args.stop_grace_s)?;
    options.echo = !args.quiet;
    options.metrics = args.service_metrics;
    options.nats = match (&args.nats_url, &args.nats_server) {
        (Some(url), _) => NatsMode::External { url: url.clone() },
        (None, Some(binary)) => NatsMode::Spawn {
            binary: binary.clone(),
        },
        (None, None) => NatsMode::Spawn {
            binary: NatsMode::find_binary().ok_or_else(|| {
                anyhow::anyhow!(
                    "no nats-server found ($NATS_SERVER, /usr/sbin/nats-server, PATH): install it, pass --nats-server PATH, or use a running server with --nats-url URL"
                )
            })?,
        },
    };
    if let NatsMode::Spawn { binary } = &options.nats
        && !binary.is_file()
    {
        anyhow::bail!("--nats-server {}: no such file", binary.display());
    }

    let shutdown = crate::shutdown::on_signal();
    let prepared = tgrpo_launcher::prepare(&config, teacher_api_key(), &shutdown).await?;
    if shutdown.is_cancelled() {
        anyhow::bail!("interrupted while preparing the run");
    }
    let outcome = tgrpo_launcher::launch(&prepared, &options, shutdown).await?;
    let restarts: Vec<String> = outcome
        .restarts
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(name, count)| format!("{name} ×{count}"))
        .collect();
    println!(
        "tgrpo launch: {}; restarts: {}; services ready after {}, first step after {}; final adapter {}; state {}",
        outcome.reason,
        if restarts.is_empty() {
            "none".to_string()
        } else {
            restarts.join(", ")
        },
        outcome
            .ready_s
            .map_or_else(|| "-".to_string(), |s| format!("{s:.1}s")),
        outcome
            .first_step_s
            .map_or_else(|| "-".to_string(), |s| format!("{s:.1}s")),
        if outcome.final_model.join("adapter_config.json").is_file() {
            outcome.final_model.display().to_string()
        } else {
            "none".to_string()
        },
        outcome.state_file.display(),
    );
    if outcome.exit_code != 0 {
        eprintln!(
            "tgrpo launch: the run did not complete ({}); the learner's last status: {}",
            outcome.reason,
            outcome.learner_status.as_deref().unwrap_or("not known")
        );
        std::process::exit(outcome.exit_code);
    }
    Ok(())
}
