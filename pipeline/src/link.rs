//! Local mode's learner link: a rollout worker talking to the learner's [`Coordinator`]
//! in the same process, with the very messages it would send over gRPC.
//!
//! The worker loop is the distributed one unchanged (leases, idempotent resubmission,
//! stale groups); only the transport is a function call instead of a socket.

use std::sync::Arc;

use futures::future::BoxFuture;
use tgrpo_learner::Coordinator;
use tgrpo_proto::learner as pb;
use tgrpo_rollout::LearnerLink;

/// [`LearnerLink`] over an in-process [`Coordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorLink {
    coordinator: Arc<Coordinator>,
}

impl CoordinatorLink {
    /// A link to `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

impl LearnerLink for CoordinatorLink {
    fn next_prompts(
        &self,
        request: pb::NextPromptsRequest,
    ) -> BoxFuture<'_, Result<pb::NextPromptsResponse, tonic::Status>> {
        Box::pin(async move { Ok(self.coordinator.next_prompts(&request)) })
    }

    fn submit_groups(
        &self,
        groups: Vec<pb::ScoredGroup>,
    ) -> BoxFuture<'_, Result<pb::SubmitGroupsResponse, tonic::Status>> {
        Box::pin(async move {
            // The same tally as the gRPC service's SubmitGroups.
            let mut response = pb::SubmitGroupsResponse::default();
            for group in groups {
                let result = self.coordinator.submit(group).await;
                match pb::GroupOutcome::try_from(result.outcome) {
                    Ok(pb::GroupOutcome::Accepted) => response.accepted += 1,
                    Ok(pb::GroupOutcome::Duplicate) => response.duplicates += 1,
                    Ok(pb::GroupOutcome::Stale) => response.stale += 1,
                    _ => response.rejected += 1,
                }
                response.results.push(result);
            }
            response.adapter_version = self.coordinator.status().adapter_version;
            Ok(response)
        })
    }

    fn describe(&self) -> String {
        "in-process learner".to_string()
    }
}
