//! `tgrpo executor`: serves the gRPC `Executor` service (scoring untrusted code in
//! sandboxes) until SIGTERM/SIGINT, then drains in-flight work.

use clap::Args;
use tokio::net::TcpListener;

use super::sandbox_args::SandboxArgs;

/// Serve sandboxed scoring over gRPC.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The run config: one TOML file with every section (what every role reads;
    /// `TGRPO_SECTION__KEY` variables override it). The executor takes `[executor]`;
    /// flags given with a non-default value override it.
    #[arg(long, env = "TGRPO_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "TGRPO_EXECUTOR_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,

    /// Requests admitted beyond the busy slots before answering RESOURCE_EXHAUSTED.
    #[arg(long, env = "TGRPO_EXECUTOR_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,

    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "TGRPO_EXECUTOR_DRAIN_TIMEOUT_S", default_value_t = 30.0)]
    pub drain_timeout_s: f64,

    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The `[executor]` section of `--config` (or the defaults) with the flags on top.
fn executor_config(args: &ExecutorArgs) -> anyhow::Result<tgrpo_executor::ExecutorConfig> {
    let defaults = tgrpo_executor::ExecutorConfig::default();
    let mut config = match &args.config {
        Some(path) => args
            .sandbox
            .over(super::run_config::load_run_config(path)?.executor),
        None => args.sandbox.to_config(),
    };
    if args.config.is_none() || args.queue_capacity != defaults.queue_capacity {
        config.queue_capacity = args.queue_capacity;
    }
    if args.config.is_none() || args.drain_timeout_s != defaults.drain_timeout_s {
        config.drain_timeout_s = args.drain_timeout_s;
    }
    Ok(config)
}

/// Binds, starts the pool and serves until a shutdown signal.
pub async fn run(args: ExecutorArgs) -> anyhow::Result<()> {
    let config = executor_config(&args)?;
    config.validate()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", args.listen))?;
    let shutdown = crate::shutdown::on_signal();
    tgrpo_executor::service::run(config, listener, shutdown).await?;
    Ok(())
}
