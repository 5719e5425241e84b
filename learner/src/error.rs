//! The learner's one error type. Every variant names the input it is about (a config
//! field, a file, a group's idempotency key) so that a failed run says what to fix.

use std::path::PathBuf;

/// Everything that can go wrong in the learner.
#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    /// A config value is out of range or inconsistent with another one.
    #[error("invalid config field `{field}`: {reason}")]
    Config {
        /// Dotted path of the field, e.g. `grpo.epsilon`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Tensor math failed (shape mismatch, device error).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),

    /// A file or directory could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A checkpoint directory is missing a part or holds something inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// A scored group is malformed (shapes that do not agree, empty completions).
    #[error("group {key}: {reason}")]
    BadGroup {
        /// The group's idempotency key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The policy model failed (forward pass, adapter I/O).
    #[error("policy: {0}")]
    Policy(String),

    /// Publishing a new adapter to rollout workers failed.
    #[error("adapter broadcast of version {version} failed: {reason}")]
    Broadcast {
        /// The adapter version that was being published.
        version: u64,
        /// Why it failed.
        reason: String,
    },
}

impl LearnerError {
    /// Shorthand for a [`LearnerError::Config`] about `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a [`LearnerError::Io`] about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a [`LearnerError::Checkpoint`] about `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The learner's result type.
pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
