//! The crate's one error type. Every variant names what it is about (endpoint, problem,
//! file and line, config field) so that a log line alone says what went wrong where.

use std::path::PathBuf;

/// Everything that can go wrong between tgrpo and the teacher, the cache and the traces.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// A config field holds a value the proxy cannot work with.
    #[error("invalid teacher config: field `{field}`: {reason}")]
    Config {
        /// Dotted name of the field, as written in the TOML section.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The teacher answered with a status that is not worth retrying (a 4xx other than 429),
    /// or a retryable one after every retry was spent.
    #[error("teacher {endpoint} answered http {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The URL that was called.
        endpoint: String,
        /// The HTTP status of the last answer.
        status: u16,
        /// How many requests were sent.
        attempts: u32,
        /// The start of the answer body: servers put the reason there.
        body: String,
    },

    /// No answer at all: connection refused or reset, or the per-request timeout elapsed,
    /// after every retry was spent.
    #[error("teacher {endpoint} unreachable after {attempts} attempt(s): {reason}")]
    Transport {
        /// The URL that was called.
        endpoint: String,
        /// How many requests were sent.
        attempts: u32,
        /// The last transport error (its text says whether it was a timeout).
        reason: String,
        /// True when the last failure was the per-request timeout.
        timed_out: bool,
    },

    /// The teacher answered 200 with something that is not a chat completion.
    #[error("teacher {endpoint} sent a malformed response after {attempts} attempt(s): {reason}")]
    MalformedResponse {
        /// The URL that was called.
        endpoint: String,
        /// How many requests were sent.
        attempts: u32,
        /// What the parser complained about.
        reason: String,
    },

    /// A request for one (problem, sample) pair failed; wraps the cause with the pair, so a
    /// failure in a run of thousands says which problem it was.
    #[error("problem {problem_id} sample {sample_index}: {source}")]
    Sample {
        /// The problem's task id.
        problem_id: String,
        /// Which of the problem's samples.
        sample_index: u32,
        /// What went wrong.
        #[source]
        source: Box<TeacherError>,
    },

    /// The executor could not score a trace's code (not the same as the code failing its tests).
    #[error("verifying problem {problem_id}: {reason}")]
    Verify {
        /// The problem's task id.
        problem_id: String,
        /// The executor's error.
        reason: String,
    },

    /// The local teacher (a policy model in this process) failed to generate.
    #[error("local teacher: {0}")]
    Local(String),

    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A line of a traces file is not a trace record (and is not a torn last line, which is
    /// repaired instead).
    #[error("{path}:{line}: not a trace record: {reason}")]
    TraceLine {
        /// The traces file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        reason: String,
    },

    /// Two problems share a task id: their traces would be indistinguishable.
    #[error("problem id {problem_id} appears more than once in the problem set")]
    DuplicateProblem {
        /// The repeated task id.
        problem_id: String,
    },

    /// The gRPC server failed (bind, accept, HTTP/2).
    #[error("teacher proxy on {address}: {source}")]
    Serve {
        /// The address it served on.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },

    /// The run was cancelled (SIGINT/SIGTERM or a dropped caller) before it finished.
    #[error("cancelled")]
    Cancelled,
}

impl TeacherError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The innermost error, past any [`TeacherError::Sample`] wrappers.
    pub fn root(&self) -> &TeacherError {
        match self {
            Self::Sample { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Maps an error to the gRPC status a caller of the teacher proxy sees, in one place.
impl From<TeacherError> for tonic::Status {
    fn from(err: TeacherError) -> Self {
        let message = err.to_string();
        match err.root() {
            TeacherError::Config { .. }
            | TeacherError::TraceLine { .. }
            | TeacherError::DuplicateProblem { .. } => tonic::Status::invalid_argument(message),
            TeacherError::Status { status, .. } if *status == 429 => {
                tonic::Status::resource_exhausted(message)
            }
            TeacherError::Status { status, .. } if (400..500).contains(status) => {
                tonic::Status::failed_precondition(message)
            }
            TeacherError::Transport {
                timed_out: true, ..
            } => tonic::Status::deadline_exceeded(message),
            TeacherError::Status { .. }
            | TeacherError::Transport { .. }
            | TeacherError::MalformedResponse { .. }
            | TeacherError::Verify { .. } => tonic::Status::unavailable(message),
            TeacherError::Cancelled => tonic::Status::cancelled(message),
            TeacherError::Local(_)
            | TeacherError::Io { .. }
            | TeacherError::Serve { .. }
            | TeacherError::Sample { .. } => tonic::Status::internal(message),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = TeacherError> = std::result::Result<T, E>;
