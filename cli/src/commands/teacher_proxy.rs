//! `tgrpo teacher-proxy`: serves `tgrpo.teacher.v1.Teacher` so that a cluster has one
//! place that talks to (and meters, and caches) the teacher.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use tgrpo_executor::{ClientConfig, Scorer};
use tgrpo_pipeline::config::TeacherKind;
use tgrpo_teacher::{AnyTeacher, LocalTeacher, TraceSource};

use super::sandbox_args::SandboxArgs;
use super::teacher_args::TeacherArgs;

/// Arguments of `tgrpo teacher-proxy`.
#[derive(Debug, Args)]
pub struct TeacherProxyArgs {
    /// The run config: one TOML file with every section (what every role reads;
    /// `TGRPO_SECTION__KEY` variables override it). The proxy takes `[teacher]`,
    /// `[synthesis]` (HTTP or local teacher), `[executor]` and the executors of
    /// `[rollout]`; the flags override it.
    #[arg(
        long = "config",
        alias = "run-config",
        env = "TGRPO_CONFIG",
        conflicts_with = "teacher_config"
    )]
    pub run_config: Option<std::path::PathBuf>,

    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "TGRPO_TEACHER_PROXY_LISTEN",
        default_value = "0.0.0.0:50053"
    )]
    pub listen: SocketAddr,

    /// Remote executors (`host:port`, comma-separated) to verify with; without it, an
    /// in-process sandbox pool.
    #[arg(long, env = "TGRPO_EXECUTOR_ENDPOINTS", value_delimiter = ',')]
    pub executor_endpoints: Vec<String>,

    #[command(flatten)]
    pub teacher: TeacherArgs,

    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(args: TeacherProxyArgs) -> anyhow::Result<()> {
    let (config, teacher, scorer) = match &args.run_config {
        Some(path) => {
            let run = super::run_config::load_run_config(path)?;
            let config = args.teacher.to_config_over(run.teacher.clone())?;
            let teacher = match (&args.teacher.local_model, run.synthesis.teacher) {
                (Some(_), _) | (None, TeacherKind::Http) => args.teacher.teacher(&config)?,
                (None, TeacherKind::Local) => AnyTeacher::Local(LocalTeacher::load(
                    run.synthesis.local_model.as_deref().unwrap_or_default(),
                    config.model_name.clone(),
                    1,
                )?),
                (None, TeacherKind::Reference) => anyhow::bail!(
                    "{}: synthesis.teacher = \"reference\" answers from a problem set and is not served by the proxy; use the synthesis stage",
                    path.display()
                ),
            };
            let endpoints = if args.executor_endpoints.is_empty() {
                run.rollout.executor_endpoints.clone()
            } else {
                args.executor_endpoints.clone()
            };
            let scorer = if endpoints.is_empty() {
                Scorer::local(args.sandbox.over(run.executor.clone())).await?
            } else {
                Scorer::remote(&endpoints, run.rollout.executor_client.clone())?
            };
            (config, teacher, scorer)
        }
        None => {
            let config = args.teacher.to_config()?;
            let teacher = args.teacher.teacher(&config)?;
            let scorer = if args.executor_endpoints.is_empty() {
                Scorer::local(args.sandbox.to_config()).await?
            } else {
                Scorer::remote(&args.executor_endpoints, ClientConfig::default())?
            };
            (config, teacher, scorer)
        }
    };
    let source = TraceSource::new(&config, teacher, scorer)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = crate::shutdown::on_signal();
    tgrpo_teacher::server::run(source, listener, shutdown).await?;
    Ok(())
}
