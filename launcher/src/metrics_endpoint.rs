//! The Prometheus `/metrics` endpoint any tgrpo process can serve
//! (`tgrpo --metrics-listen ADDR <role> ...`).
//!
//! The service crates record through the `metrics` facade with a crate prefix
//! (`tgrpo_executor_*`, `tgrpo_learner_*`, `tgrpo_rollout_*`, `tgrpo_teacher_*`; each
//! crate's `metrics`/`prometheus` module lists its series). Those calls are no-ops until
//! a recorder is installed; [`install_recorder`] installs the Prometheus one (once per
//! process), and [`serve`] answers `GET /metrics` with its text exposition over axum.
//! Histograms whose name ends in `_seconds` are real Prometheus histograms with
//! [`SECONDS_BUCKETS`]; counters keep the names the crates give them (already `_total`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{LaunchError, Result};

/// Bucket bounds (seconds) of every `*_seconds` histogram: from a 5 ms sandboxed
/// execution to a multi-minute teacher answer.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between scrapes (keeps
/// memory flat however rarely Prometheus scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global `metrics` recorder (the
/// first call does; later calls return the same handle), so every series recorded
/// afterwards shows in [`PrometheusHandle::render`]. Fails when some other recorder was
/// installed first.
pub fn install_recorder() -> Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|err| format!("prometheus buckets: {err}"))?
                .install_recorder()
                .map_err(|err| format!("cannot install the prometheus recorder: {err}"))
        })
        .clone()
        .map_err(LaunchError::Other)
}

/// A running `/metrics` endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the bound port when `:0` was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL to scrape.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.address)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Installs the recorder ([`install_recorder`]), binds `address` and serves
/// `GET /metrics` on it until `shutdown` fires (or the runtime ends). Binding errors
/// name the address.
pub async fn serve(address: SocketAddr, shutdown: CancellationToken) -> Result<MetricsServer> {
    let handle = install_recorder()?;
    let listener = TcpListener::bind(address).await.map_err(|source| {
        LaunchError::Other(format!("--metrics-listen {address}: cannot bind: {source}"))
    })?;
    let address = listener
        .local_addr()
        .map_err(|source| LaunchError::Other(format!("--metrics-listen {address}: {source}")))?;
    let upkeep = handle.clone();
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render()).into_response() }
        }),
    );
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let upkeep_stop = stop.clone();
        let upkeep_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = upkeep_stop.cancelled() => break,
                    () = tokio::time::sleep(UPKEEP_INTERVAL) => upkeep.run_upkeep(),
                }
            }
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(%address, %err, "metrics endpoint stopped");
        }
        upkeep_task.abort();
    });
    tracing::info!(url = %format!("http://{address}/metrics"), "serving prometheus metrics");
    Ok(MetricsServer {
        address,
        shutdown,
        task,
    })
}
