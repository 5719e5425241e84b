//! The gRPC `Executor` service (`tgrpo.executor.v1`) plus `grpc.health.v1`.
//!
//! - `Score` is admitted only while fewer than `slots + queue_capacity` requests are
//!   in the executor; beyond that it answers `RESOURCE_EXHAUSTED` at once, so memory
//!   stays bounded however many clients push.
//! - `ScoreBatch` applies backpressure instead: it reads the next request only when
//!   the executor can admit it (HTTP/2 flow control then slows the client). Responses
//!   go out as each program finishes, matched by `id`.
//! - On shutdown (SIGTERM in `tgrpo executor`) health turns `NOT_SERVING`, new calls
//!   get `UNAVAILABLE` (clients retry elsewhere), in-flight calls finish, open
//!   `ScoreBatch` streams stop reading, finish what they admitted and end with
//!   `UNAVAILABLE`; after `drain_timeout_s` whatever is left is dropped.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tgrpo_proto::executor::executor_server::{Executor, ExecutorServer};
use tgrpo_proto::executor::{ScoreRequest, ScoreResponse};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::ExecutorConfig;
use crate::error::ExecutorError;
use crate::scoring::LocalScorer;

/// Largest request or response message accepted on the wire.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Serves `config` on `listener` until `shutdown` is cancelled, then drains.
pub async fn run(
    config: ExecutorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ExecutorError> {
    let scorer = LocalScorer::start(config).await?;
    serve(scorer, listener, shutdown).await
}

/// Serves an already started pool (see [`run`]).
pub async fn serve(
    scorer: LocalScorer,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ExecutorError> {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |addr| addr.to_string());
    let capacity = scorer.pool().slots() + scorer.config().queue_capacity;
    let drain_timeout = scorer.config().drain_timeout();
    let draining = CancellationToken::new();
    let service = ExecutorService {
        scorer: scorer.clone(),
        admission: Arc::new(Semaphore::new(capacity)),
        capacity,
        draining: draining.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExecutorServer<ExecutorService>>()
        .await;
    tracing::info!(%address, slots = scorer.pool().slots(), capacity, "executor serving");

    let signal = {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            ExecutorServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    tokio::pin!(server);
    let serve_error = |source| ExecutorError::Serve {
        address: address.clone(),
        source,
    };
    tokio::select! {
        result = &mut server => {
            scorer.pool().close().await;
            return result.map_err(serve_error);
        }
        () = shutdown.cancelled() => {}
    }
    tracing::info!(%address, "executor draining");
    draining.cancel();
    health
        .set_not_serving::<ExecutorServer<ExecutorService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let result = match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(result) => result.map_err(serve_error),
        Err(_) => {
            tracing::warn!(%address, ?drain_timeout, "drain period over; stopping with calls in flight");
            Ok(())
        }
    };
    scorer.pool().close().await;
    tracing::info!(%address, "executor stopped");
    result
}

#[derive(Clone)]
struct ExecutorService {
    scorer: LocalScorer,
    admission: Arc<Semaphore>,
    capacity: usize,
    draining: CancellationToken,
}

fn to_status(err: ExecutorError) -> Status {
    match err {
        ExecutorError::PoolClosed => Status::unavailable("the executor is shutting down"),
        other => Status::internal(other.to_string()),
    }
}

fn draining_status() -> Status {
    Status::unavailable("the executor is draining; send remaining requests elsewhere")
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ScoreResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Executor for ExecutorService {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        if self.draining.is_cancelled() {
            return Err(draining_status());
        }
        let _permit = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                crate::metrics::rejected();
                Status::resource_exhausted(format!(
                    "the executor's queue is full ({} requests admitted)",
                    self.capacity
                ))
            })?;
        let response = self
            .scorer
            .score(request.into_inner())
            .await
            .map_err(to_status)?;
        Ok(Response::new(response))
    }

    type ScoreBatchStream = ResponseStream;

    async fn score_batch(
        &self,
        request: Request<Streaming<ScoreRequest>>,
    ) -> Result<Response<Self::ScoreBatchStream>, Status> {
        if self.draining.is_cancelled() {
            return Err(draining_status());
        }
        let mut inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(self.scorer.pool().slots() * 2 + 1);
        let service = self.clone();
        tokio::spawn(async move {
            let mut running = JoinSet::new();
            let mut drained = false;
            loop {
                // Admission before reading: an unread request costs the executor
                // nothing, and the client is slowed by flow control.
                let permit = tokio::select! {
                    () = service.draining.cancelled() => { drained = true; break; }
                    permit = Arc::clone(&service.admission).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => { drained = true; break; }
                    },
                };
                let next = tokio::select! {
                    () = service.draining.cancelled() => { drained = true; break; }
                    next = inbound.message() => next,
                };
                let request = match next {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "score batch stream broke");
                        break;
                    }
                };
                let scorer = service.scorer.clone();
                let sender = sender.clone();
                running.spawn(async move {
                    let _permit = permit;
                    let result = scorer.score(request).await.map_err(to_status);
                    // A closed receiver means the client went away; nothing to do.
                    let _ = sender.send(result).await;
                });
                // Reap finished tasks as we go so the set does not grow.
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
            if drained {
                let _ = sender.send(Err(draining_status())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
