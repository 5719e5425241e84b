//! The learner as a running service: the gRPC `Learner` API over a [`Coordinator`], the
//! training thread that pulls batches from it, checkpoints, metrics, and the publication
//! of every new adapter.
//!
//! [`TrainingRun`] ties the parts together. Distributed mode calls [`TrainingRun::serve`]
//! with a bound listener; local mode can do the same on loopback, or call
//! [`TrainingRun::train`] and talk to [`TrainingRun::coordinator`] in-process with the very
//! same messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tgrpo_dataset::Problem;
use tgrpo_proto::learner as pb;
use tgrpo_proto::learner::learner_server::{Learner as LearnerApi, LearnerServer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::TrainablePolicy;
use crate::checkpoint;
use crate::coordinator::Coordinator;
use crate::error::{LearnerError, Result};
use crate::metrics::MetricsWriter;
use crate::scheduler::ScheduleSnapshot;
use crate::trainer::{BatchContext, Learner};

/// Largest gRPC message accepted or sent: a group of 16 completions of 4k tokens with
/// log-probs is ~0.5 MB; the limit leaves room without letting one call exhaust memory.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How often the training thread wakes up while waiting for groups.
const BATCH_POLL: Duration = Duration::from_millis(200);

/// Where each new adapter goes: the broadcast to rollout workers (in-process or NATS), or
/// anything else that wants `(version, safetensors bytes)`.
pub trait AdapterSink: Send + Sync + 'static {
    /// Publishes `bytes` as adapter `version`; versions arrive in increasing order.
    fn publish(&self, version: u64, bytes: Vec<u8>) -> BoxFuture<'_, Result<()>>;

    /// The newest version announced for this run so far, by this process or an earlier
    /// one (a learner that crashed and is resumed): the run continues numbering above it.
    /// `None` when nothing was announced or the sink cannot tell.
    fn latest_published(&self) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(async { Ok(None) })
    }
}

/// The adapter broadcast's publisher (in-process or NATS) is a sink as is.
impl AdapterSink for tgrpo_broadcast::AdapterPublisher {
    fn publish(&self, version: u64, bytes: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            tgrpo_broadcast::AdapterPublisher::publish(self, version, bytes)
                .await
                .map(|_receipt| ())
                .map_err(|err| LearnerError::Broadcast {
                    version,
                    reason: err.to_string(),
                })
        })
    }

    fn latest_published(&self) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(async move {
            self.latest_announced_version()
                .await
                .map_err(|err| LearnerError::Broadcast {
                    version: 0,
                    reason: format!("looking up the latest announced version: {err}"),
                })
        })
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every epoch's prompts were trained on.
    Completed,
    /// `max_steps` was reached.
    MaxSteps,
    /// The shutdown token was cancelled; a checkpoint holds the state to resume from.
    Shutdown,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Why it ended.
    pub reason: StopReason,
    /// Optimizer steps, skipped ones included.
    pub steps: u64,
    /// Final adapter version.
    pub adapter_version: u64,
    /// The final PEFT adapter (`output_dir/final_model`), when training completed.
    pub final_model: Option<PathBuf>,
    /// The newest checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Groups dropped as stale, duplicates and rejections over the run.
    pub counters: crate::coordinator::CoordinatorCounters,
}

/// One training run: learner, coordinator, metrics file, optional adapter sink.
pub struct TrainingRun<P: TrainablePolicy> {
    learner: Learner<P>,
    coordinator: Arc<Coordinator>,
    sink: Option<Arc<dyn AdapterSink>>,
    metrics: MetricsWriter,
    output_dir: PathBuf,
    last_checkpoint: Option<PathBuf>,
}

impl<P: TrainablePolicy> std::fmt::Debug for TrainingRun<P> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TrainingRun")
            .field("learner", &self.learner)
            .field("output_dir", &self.output_dir)
            .finish_non_exhaustive()
    }
}

impl<P: TrainablePolicy + 'static> TrainingRun<P> {
    /// Prepares a run over `problems`. With `training.resume` and a checkpoint in
    /// `training.output_dir`, the learner and the prompt schedule continue from the newest
    /// one and the metrics file is cut back to its step.
    pub fn new(
        mut learner: Learner<P>,
        problems: Vec<Problem>,
        sink: Option<Arc<dyn AdapterSink>>,
    ) -> Result<Self> {
        let config = learner.config().clone();
        if problems.is_empty() {
            return Err(LearnerError::config(
                "training.prompts",
                "the prompt set is empty",
            ));
        }
        let coordinator = Arc::new(Coordinator::new(
            problems,
            &config.grpo,
            &config.training,
            &config.learner,
        ));
        let output_dir = config.training.output_dir.clone();
        let mut resume_step = None;
        let mut last_checkpoint = None;
        if config.training.resume
            && let Some(dir) = checkpoint::latest_checkpoint(&output_dir)?
        {
            let driver = learner.restore(&dir)?;
            let snapshot: ScheduleSnapshot = serde_json::from_value(driver["schedule"].clone())
                .map_err(|err| LearnerError::checkpoint(&dir, format!("schedule: {err}")))?;
            coordinator.restore(&snapshot);
            let state = learner.state();
            coordinator.set_progress(state.adapter_version, state.step, state.skipped_steps);
            resume_step = Some(state.step);
            tracing::info!(checkpoint = %dir.display(), step = state.step, version = state.adapter_version, "resumed");
            last_checkpoint = Some(dir);
        }
        let metrics = MetricsWriter::open(output_dir.join("metrics.jsonl"), resume_step)?;
        Ok(Self {
            learner,
            coordinator,
            sink,
            metrics,
            output_dir,
            last_checkpoint,
        })
    }

    /// The coordinator: what workers talk to (in-process, or through [`LearnerGrpc`]).
    pub fn coordinator(&self) -> Arc<Coordinator> {
        self.coordinator.clone()
    }

    /// The learner (state, policy).
    pub fn learner(&self) -> &Learner<P> {
        &self.learner
    }

    /// Serves the gRPC API on `listener` (plus gRPC health) while training; returns when
    /// training ends (then answers `finished` for `finish_linger_s` more) or on shutdown.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<RunSummary> {
        let address = listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |addr| addr.to_string());
        let linger = Duration::from_secs_f64(self.learner.config().learner.finish_linger_s);
        let coordinator = self.coordinator();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<LearnerServer<LearnerGrpc>>().await;
        let server_stop = CancellationToken::new();
        let server = {
            let stop = server_stop.clone();
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(LearnerGrpc::new(coordinator.clone()).into_server())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    stop.cancelled().await
                })
        };
        let server = tokio::spawn(server);
        tracing::info!(%address, prompts = coordinator.problems().len(), "learner serving");
        let summary = self.train(shutdown.clone()).await;
        if summary.is_ok() && !shutdown.is_cancelled() {
            // Workers polling for prompts learn that the run is over.
            tokio::select! {
                () = tokio::time::sleep(linger) => {}
                () = shutdown.cancelled() => {}
            }
        }
        health.set_not_serving::<LearnerServer<LearnerGrpc>>().await;
        server_stop.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => tracing::error!(%address, %source, "learner server failed"),
            Err(join) => tracing::error!(%address, %join, "learner server task failed"),
        }
        tracing::info!(%address, "learner stopped");
        summary
    }

    /// Trains until every prompt is done, `max_steps`, or shutdown, on a blocking thread
    /// (forward and backward passes must not stall the async runtime).
    ///
    /// First, if the adapter sink already announced a version at or above the learner's
    /// (a resumed run whose crashed predecessor published past its last checkpoint), the
    /// learner continues above it (see [`Learner::continue_versions_after`]).
    pub async fn train(mut self, shutdown: CancellationToken) -> Result<RunSummary> {
        self.continue_above_published().await;
        let coordinator = self.coordinator();
        let watcher = {
            let shutdown = shutdown.clone();
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                coordinator.finish();
            })
        };
        let runtime = tokio::runtime::Handle::current();
        let result = tokio::task::spawn_blocking(move || self.train_blocking(&shutdown, &runtime))
            .await
            .map_err(|join| LearnerError::Policy(format!("training thread failed: {join}")))?;
        watcher.abort();
        coordinator.finish();
        result
    }

    fn train_blocking(
        mut self,
        shutdown: &CancellationToken,
        runtime: &tokio::runtime::Handle,
    ) -> Result<RunSummary> {
        let config = self.learner.config().clone();
        let save_every = config.training.save_every_steps as u64;
        let max_steps = config.training.max_steps.map(|steps| steps as u64);
        self.publish(runtime)?;
        let mut reason = StopReason::Completed;
        let mut saved_step = self.learner.state().step;
        loop {
            if max_steps.is_some_and(|max| self.learner.state().step >= max) {
                reason = StopReason::MaxSteps;
                break;
            }
            let Some(batch) = self.coordinator.wait_for_batch(BATCH_POLL) else {
                if shutdown.is_cancelled() {
                    reason = StopReason::Shutdown;
                }
                break;
            };
            let counters = self.coordinator.counters();
            let context = BatchContext {
                epoch: batch.epoch,
                dropped_stale_total: counters.dropped_stale,
                duplicate_groups_total: counters.duplicates,
                skipped_items_total: counters.skipped,
            };
            let version_before = self.learner.adapter_version();
            let step_before = self.learner.state().step;
            let lines = match self.learner.train_batch(&batch.groups, context) {
                Ok(lines) => lines,
                Err(err) => {
                    tracing::error!(%err, "training step failed; stopping");
                    self.coordinator.finish();
                    return Err(err);
                }
            };
            for line in &lines {
                self.metrics.write(line)?;
                tracing::info!(
                    step = line.step,
                    version = line.adapter_version,
                    loss = line.loss,
                    reward = line.reward_mean,
                    kl = line.kl.unwrap_or(0.0),
                    grad_norm = line.grad_norm,
                    tokens_per_s = line.tokens_per_s,
                    skipped = line.skipped,
                    "step"
                );
            }
            let state = self.learner.state().clone();
            self.coordinator
                .set_progress(state.adapter_version, state.step, state.skipped_steps);
            if state.adapter_version != version_before {
                self.publish(runtime)?;
            }
            if save_every > 0 && state.step / save_every != step_before / save_every {
                self.checkpoint()?;
                saved_step = state.step;
            }
        }
        if self.learner.state().step != saved_step || self.last_checkpoint.is_none() {
            self.checkpoint()?;
        }
        let final_model = if reason == StopReason::Shutdown {
            None
        } else {
            let dir = self.output_dir.join("final_model");
            self.learner.save_adapter(&dir)?;
            Some(dir)
        };
        self.coordinator.finish();
        let state = self.learner.state();
        tracing::info!(
            ?reason,
            steps = state.step,
            version = state.adapter_version,
            "training ended"
        );
        Ok(RunSummary {
            reason,
            steps: state.step,
            adapter_version: state.adapter_version,
            final_model,
            last_checkpoint: self.last_checkpoint.clone(),
            counters: self.coordinator.counters(),
        })
    }

    async fn continue_above_published(&mut self) {
        let Some(sink) = &self.sink else {
            return;
        };
        let published = match sink.latest_published().await {
            Ok(Some(published)) => published,
            Ok(None) => return,
            // Unknown: continuing as is at worst delays workers until the versions pass
            // the old ones; not a reason to refuse to train.
            Err(err) => {
                tracing::warn!(%err, "cannot tell the latest announced adapter version; continuing with the checkpoint's numbering");
                return;
            }
        };
        let current = self.learner.adapter_version();
        if let Some(next) = self.learner.continue_versions_after(published) {
            let state = self.learner.state();
            self.coordinator
                .set_progress(next, state.step, state.skipped_steps);
            tracing::warn!(
                published,
                checkpoint_version = current,
                continuing_at = next,
                "adapter versions up to {published} were announced by an earlier learner of this run; continuing above them so that workers take the new adapter and groups sampled with the lost versions count as stale"
            );
        }
    }

    fn checkpoint(&mut self) -> Result<()> {
        let driver = serde_json::json!({ "schedule": self.coordinator.snapshot() });
        let dir = self.learner.save_checkpoint(&self.output_dir, driver)?;
        tracing::info!(checkpoint = %dir.display(), "checkpoint written");
        self.last_checkpoint = Some(dir);
        Ok(())
    }

    fn publish(&self, runtime: &tokio::runtime::Handle) -> Result<()> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let version = self.learner.adapter_version();
        let bytes = self.learner.adapter_bytes()?;
        let size = bytes.len();
        let started = std::time::Instant::now();
        // Publishing in line keeps the order simple (a worker never sees version N+1
        // before N is out) and bounds memory to one adapter copy.
        match runtime.block_on(sink.publish(version, bytes)) {
            Ok(()) => {
                tracing::info!(
                    version,
                    size,
                    seconds = started.elapsed().as_secs_f64(),
                    "adapter published"
                );
                Ok(())
            }
            // Workers keep sampling with the previous adapter; their groups age and are
            // dropped as stale if this persists, which the metrics show. Not fatal.
            Err(err) => {
                tracing::error!(version, %err, "adapter publication failed");
                Ok(())
            }
        }
    }
}

/// The tonic service: a thin layer over [`Coordinator`].
#[derive(Debug, Clone)]
pub struct LearnerGrpc {
    coordinator: Arc<Coordinator>,
}

impl LearnerGrpc {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }

    /// The service wrapped for a tonic `Server`, with the learner's message limits.
    pub fn into_server(self) -> LearnerServer<Self> {
        LearnerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl LearnerApi for LearnerGrpc {
    async fn next_prompts(
        &self,
        request: Request<pb::NextPromptsRequest>,
    ) -> Result<Response<pb::NextPromptsResponse>, Status> {
        Ok(Response::new(
            self.coordinator.next_prompts(request.get_ref()),
        ))
    }

    async fn submit_groups(
        &self,
        request: Request<Streaming<pb::ScoredGroup>>,
    ) -> Result<Response<pb::SubmitGroupsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut response = pb::SubmitGroupsResponse::default();
        while let Some(group) = stream.next().await {
            let result = self.coordinator.submit(group?).await;
            match pb::GroupOutcome::try_from(result.outcome) {
                Ok(pb::GroupOutcome::Accepted) => response.accepted += 1,
                Ok(pb::GroupOutcome::Duplicate) => response.duplicates += 1,
                Ok(pb::GroupOutcome::Stale) => response.stale += 1,
                Ok(pb::GroupOutcome::Skipped) => response.skipped += 1,
                _ => response.rejected += 1,
            }
            response.results.push(result);
        }
        response.adapter_version = self.coordinator.status().adapter_version;
        Ok(Response::new(response))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.coordinator.status()))
    }
}
