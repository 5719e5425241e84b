//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong launching, supervising or checking components.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The run config is invalid or cannot be prepared (data, model, traces).
    #[error("{0}")]
    Config(String),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {service} ({program}): {source}")]
    Spawn {
        /// The service being started.
        service: String,
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A service did not become healthy in time, or exited while starting.
    #[error("{service} did not become ready: {reason}")]
    NotReady {
        /// The service.
        service: String,
        /// Why (exit status, timeout, last health answer).
        reason: String,
    },
    /// No free loopback port could be found.
    #[error("no free port on 127.0.0.1: {0}")]
    Ports(std::io::Error),
    /// An error from the pipeline crate (data stage, synthesis, config, model).
    #[error(transparent)]
    Pipeline(#[from] tgrpo_pipeline::PipelineError),
    /// A check or benchmark failed for a reason that is not a component's verdict.
    #[error("{0}")]
    Other(String),
}

impl LaunchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = LaunchError> = std::result::Result<T, E>;
