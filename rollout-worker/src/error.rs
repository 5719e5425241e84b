//! The crate's one error type.
//!
//! Only what a caller must act on is an error. A learner, executor or NATS server that is
//! away is not: the worker logs it and retries with backoff. A program that does not
//! compile, or an answer with no code, is not either: it is a verdict with a reward.

use tgrpo_broadcast::BroadcastError;
use tgrpo_executor::ExecutorError;
use tgrpo_policy::PolicyError;

/// Everything that can stop a rollout worker or a sampling call.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A config field holds a value that cannot work.
    #[error("invalid rollout config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field, as spelled in the `[rollout]` TOML section.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },

    /// Sampling settings that the policy cannot honour (from the learner's lease or the
    /// eval stage's flags).
    #[error("invalid sampling settings: `{field}` {reason}")]
    InvalidSettings {
        /// The offending setting.
        field: &'static str,
        /// Why the value is rejected.
        reason: String,
    },

    /// The model could not be loaded, or generation failed.
    #[error("policy: {context}")]
    Policy {
        /// What was being done (loading `PATH`, generating for task `ID`, ...).
        context: String,
        /// The policy crate's error (boxed: candle's errors are large).
        #[source]
        source: Box<PolicyError>,
    },

    /// Scoring failed for good (infrastructure, not a bad program) after the configured
    /// attempts.
    #[error("scoring {requests} programs failed after {attempts} attempts")]
    Scoring {
        /// How many programs were in the failed call.
        requests: usize,
        /// How many times it was tried.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<ExecutorError>,
    },

    /// The executor answered, but not with one response per request in order.
    #[error("executor answered request `{expected}` with `{got}`")]
    ScoringMismatch {
        /// The request id that was expected at this position.
        expected: String,
        /// The id that came back.
        got: String,
    },

    /// Starting the executor client or local pool failed.
    #[error("executor setup")]
    Executor(#[source] Box<ExecutorError>),

    /// The learner endpoint cannot be used (bad URI).
    #[error("invalid learner endpoint `{endpoint}`: {reason}")]
    LearnerEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// The adapter broadcast could not be set up (bad config or run id).
    #[error("adapter broadcast")]
    Broadcast(#[source] Box<BroadcastError>),

    /// The generation thread died (a panic in the model code).
    #[error("generation thread failed: {0}")]
    GenerationThread(String),

    /// The caller's cancellation token fired before the work was done.
    #[error("cancelled")]
    Cancelled,
}

impl RolloutError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A policy error with what was being done.
    pub fn policy(context: impl Into<String>, source: PolicyError) -> Self {
        Self::Policy {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

impl From<ExecutorError> for RolloutError {
    fn from(error: ExecutorError) -> Self {
        Self::Executor(Box::new(error))
    }
}

impl From<BroadcastError> for RolloutError {
    fn from(error: BroadcastError) -> Self {
        Self::Broadcast(Box::new(error))
    }
}

/// Result alias for this crate.
pub type Result<T, E = RolloutError> = std::result::Result<T, E>;
