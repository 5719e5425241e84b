//! [`Scorer`]: the one handle other crates use to score code, the same async API
//! whether the sandboxes run in this process or behind remote executors.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tgrpo_executor::ExecutorError> {
//! use tgrpo_executor::{ExecutorConfig, Scorer, requests};
//!
//! // In-process: a local pool of sandboxes (one slot per core by default).
//! let scorer = Scorer::local(ExecutorConfig::default()).await?;
//! // ...or remote: balanced over executors started with `tgrpo executor`.
//! // let scorer = Scorer::remote(&["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
//! //                             tgrpo_executor::ClientConfig::default())?;
//!
//! let request = requests::mbpp("task-11/sample-3", "def f(x):\n    return x + 1\n",
//!                              ["assert f(1) == 2"], "");
//! let response = scorer.score(request).await?;
//! println!("{:?} reward {}", response.verdict(), response.reward);
//!
//! // Many at once (a GRPO group, an eval shard): responses in request order.
//! let batch = vec![requests::mbpp("a", "def f(x): return x", ["assert f(1) == 1"], "")];
//! let responses = scorer.score_many(batch).await?;
//! assert_eq!(responses[0].id, "a");
//! # Ok(()) }
//! ```

use tgrpo_proto::executor::{ScoreRequest, ScoreResponse};

use crate::client::{BalancedClient, ClientConfig, score_many_with};
use crate::config::ExecutorConfig;
use crate::error::ExecutorError;
use crate::sandbox::IsolationReport;
use crate::scoring::LocalScorer;

/// Scores programs against tests, in-process or remotely. Cheap to clone: clones share
/// the pool or the connections. An `Err` means the scoring infrastructure failed
/// (pool shut down, every endpoint unreachable); a bad *program* or a malformed
/// *request* is an `Ok` response with verdict `ERROR`.
#[derive(Clone, Debug)]
pub struct Scorer {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Local(LocalScorer),
    Remote(BalancedClient),
}

impl Scorer {
    /// Starts an in-process pool of sandboxes. Fails when the host cannot give the
    /// sandbox (unless `config.unsafe_no_sandbox`).
    pub async fn local(config: ExecutorConfig) -> Result<Self, ExecutorError> {
        Ok(Self {
            backend: Backend::Local(LocalScorer::start(config).await?),
        })
    }

    /// Wraps an already started local scorer (the gRPC service shares its pool).
    pub fn from_local(local: LocalScorer) -> Self {
        Self {
            backend: Backend::Local(local),
        }
    }

    /// A client balancing over remote executors (`host:port` each). Connects lazily.
    pub fn remote(endpoints: &[String], config: ClientConfig) -> Result<Self, ExecutorError> {
        Ok(Self {
            backend: Backend::Remote(BalancedClient::new(endpoints, config)?),
        })
    }

    /// Scores one request.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse, ExecutorError> {
        match &self.backend {
            Backend::Local(local) => local.score(request).await,
            Backend::Remote(client) => client.score(request).await,
        }
    }

    /// Scores many requests concurrently (as many as the pool or the endpoints take);
    /// responses come back in request order.
    pub async fn score_many(
        &self,
        requests: Vec<ScoreRequest>,
    ) -> Result<Vec<ScoreResponse>, ExecutorError> {
        match &self.backend {
            Backend::Local(local) => {
                // Twice the slots keeps every slot busy while responses are assembled;
                // the pool's semaphore does the real queueing.
                let concurrency = local.pool().slots() * 2;
                score_many_with(requests, concurrency, |request| local.score(request)).await
            }
            Backend::Remote(client) => client.score_many(requests).await,
        }
    }

    /// What the sandbox gives on this host (local scorers only).
    pub fn isolation(&self) -> Option<&IsolationReport> {
        match &self.backend {
            Backend::Local(local) => Some(local.pool().isolation()),
            Backend::Remote(_) => None,
        }
    }

    /// Stops a local pool (running executions finish first; every sandbox process is
    /// gone once they have). Remote scorers just drop their connections with the last
    /// clone.
    pub async fn close(&self) {
        if let Backend::Local(local) = &self.backend {
            local.pool().close().await;
        }
    }

    /// The local pool (`None` for remote scorers).
    pub fn pool(&self) -> Option<&crate::SandboxPool> {
        match &self.backend {
            Backend::Local(local) => Some(local.pool()),
            Backend::Remote(_) => None,
        }
    }

    /// True when scoring happens in this process.
    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }
}
