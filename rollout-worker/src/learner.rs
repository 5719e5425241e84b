//! The worker's view of the learner: lease prompts, submit scored groups.
//!
//! [`LearnerLink`] is the two calls a worker makes, with the `tgrpo.learner.v1` messages.
//! [`GrpcLearner`] makes them over gRPC (distributed mode, and local mode on loopback);
//! an in-process implementation over the learner's coordinator needs nothing else, so
//! the worker loop is the same code either way.
//!
//! Every call has a deadline. A learner that is away shows up as an `Err` (usually
//! `UNAVAILABLE`); the worker backs off and retries. The gRPC channel connects lazily and
//! reconnects by itself on the next call.

use std::time::Duration;

use futures::future::BoxFuture;
use tgrpo_proto::learner as pb;
use tgrpo_proto::learner::learner_client::LearnerClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Result, RolloutError};

/// Largest gRPC message sent or accepted (the learner's own limit): a lease of many long
/// HumanEval prompts, or a batch of groups of 16 completions of 4k tokens with log-probs.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The learner calls a rollout worker makes.
pub trait LearnerLink: Send + Sync + 'static {
    /// Leases prompts (`NextPrompts`).
    fn next_prompts(
        &self,
        request: pb::NextPromptsRequest,
    ) -> BoxFuture<'_, std::result::Result<pb::NextPromptsResponse, tonic::Status>>;

    /// Submits scored groups (`SubmitGroups`); the answer has one result per group.
    fn submit_groups(
        &self,
        groups: Vec<pb::ScoredGroup>,
    ) -> BoxFuture<'_, std::result::Result<pb::SubmitGroupsResponse, tonic::Status>>;

    /// Where the learner is, for logs.
    fn describe(&self) -> String;
}

/// Deadlines of the learner calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnerTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// `NextPrompts`.
    pub request: Duration,
    /// `SubmitGroups`: long, because the learner holds the call while its buffer is full
    /// (backpressure) until a training step frees room.
    pub submit: Duration,
}

/// [`LearnerLink`] over gRPC.
#[derive(Debug, Clone)]
pub struct GrpcLearner {
    client: LearnerClient<Channel>,
    endpoint: String,
    timeouts: LearnerTimeouts,
}

impl GrpcLearner {
    /// A client for `endpoint` (`host:port` or `http://host:port`). Connects lazily: this
    /// succeeds while the learner is still down.
    pub fn connect_lazy(endpoint: &str, timeouts: LearnerTimeouts) -> Result<Self> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let bad = |reason: String| RolloutError::LearnerEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let channel = Endpoint::from_shared(uri.clone())
            .map_err(|err| bad(err.to_string()))?
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = LearnerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            endpoint: uri,
            timeouts,
        })
    }
}

/// Runs a call under a deadline; an expired deadline becomes `DEADLINE_EXCEEDED`.
async fn with_deadline<T>(
    deadline: Duration,
    what: &str,
    call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> std::result::Result<T, tonic::Status> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_elapsed) => Err(tonic::Status::deadline_exceeded(format!(
            "{what} took longer than {deadline:?}"
        ))),
    }
}

impl LearnerLink for GrpcLearner {
    fn next_prompts(
        &self,
        request: pb::NextPromptsRequest,
    ) -> BoxFuture<'_, std::result::Result<pb::NextPromptsResponse, tonic::Status>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            with_deadline(
                self.timeouts.request,
                "NextPrompts",
                client.next_prompts(request),
            )
            .await
        })
    }

    fn submit_groups(
        &self,
        groups: Vec<pb::ScoredGroup>,
    ) -> BoxFuture<'_, std::result::Result<pb::SubmitGroupsResponse, tonic::Status>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            with_deadline(
                self.timeouts.submit,
                "SubmitGroups",
                client.submit_groups(tokio_stream::iter(groups)),
            )
            .await
        })
    }

    fn describe(&self) -> String {
        self.endpoint.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> LearnerTimeouts {
        LearnerTimeouts {
            connect: Duration::from_millis(200),
            request: Duration::from_secs(1),
            submit: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_learner_that_is_down_is_an_error_not_a_hang() {
        // A port nobody listens on: bind, read the port, close.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let learner = GrpcLearner::connect_lazy(&address.to_string(), timeouts()).unwrap();
        assert_eq!(learner.describe(), format!("http://{address}"));
        let status = learner
            .next_prompts(pb::NextPromptsRequest::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            "{status:?}"
        );
    }

    #[test]
    fn a_bad_endpoint_is_named() {
        let err = GrpcLearner::connect_lazy("http://bad host:1", timeouts()).unwrap_err();
        assert!(err.to_string().contains("bad host"), "{err}");
    }
}
