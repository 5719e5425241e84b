//! `tgrpo teacher-proxy`: serves `tgrpo.teacher.v1.Teacher` so that a cluster has one
//! place that talks to (and meters, and caches) the teacher.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use tgrpo_executor::{ClientConfig, Scorer};
use tgrpo_teacher::TraceSource;

use super::sandbox_args::SandboxArgs;
use super::teacher_args::TeacherArgs;

/// Arguments of `tgrpo teacher-proxy`.
#[derive(Debug, Args)]
pub struct TeacherProxyArgs {
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
    let config = args.teacher.to_config()?;
    let teacher = args.teacher.teacher(&config)?;
    let scorer = if args.executor_endpoints.is_empty() {
        Scorer::local(args.sandbox.to_config()).await?
    } else {
        Scorer::remote(&args.executor_endpoints, ClientConfig::default())?
    };
    let source = TraceSource::new(&config, teacher, scorer)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = crate::shutdown::on_signal();
    tgrpo_teacher::server::run(source, listener, shutdown).await?;
    Ok(())
}
