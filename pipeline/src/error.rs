//! The crate's one error type: what stops a stage. Each variant keeps the owning crate's
//! error, whose message already names the file, key or endpoint at fault.

use std::path::PathBuf;

/// Everything that can stop a stage.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The run config is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A problem file could not be read or written.
    #[error(transparent)]
    Dataset(#[from] tgrpo_dataset::DatasetError),
    /// The model could not be built, loaded or run.
    #[error("model: {0}")]
    Policy(#[from] tgrpo_policy::PolicyError),
    /// The learner failed.
    #[error("learner: {0}")]
    Learner(#[from] tgrpo_learner::LearnerError),
    /// Sampling or a rollout worker failed.
    #[error("rollout: {0}")]
    Rollout(#[from] tgrpo_rollout::RolloutError),
    /// The teacher or the synthesis stage failed.
    #[error("teacher: {0}")]
    Teacher(#[from] tgrpo_teacher::TeacherError),
    /// The executor pool or client failed.
    #[error("executor: {0}")]
    Executor(#[from] tgrpo_executor::ExecutorError),
    /// The adapter broadcast failed.
    #[error("broadcast: {0}")]
    Broadcast(#[from] tgrpo_broadcast::BroadcastError),
    /// The report could not be drawn.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A stage cannot go on; the message says why and what to do.
    #[error("{stage}: {message}")]
    Stage {
        /// `data`, `synthesis`, `train`, `eval` or `local`.
        stage: &'static str,
        /// Why, and the fix.
        message: String,
    },
    /// The run was interrupted (SIGINT/SIGTERM); rerunning resumes.
    #[error("{stage}: interrupted; rerun to resume")]
    Cancelled {
        /// The stage that was running.
        stage: &'static str,
    },
}

impl PipelineError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A stage-level failure with its fix.
    pub fn stage(stage: &'static str, message: impl Into<String>) -> Self {
        Self::Stage {
            stage,
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
