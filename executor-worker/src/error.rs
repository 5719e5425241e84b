//! The crate's one error type. A malformed *request* is not an error: it gets a
//! `VERDICT_ERROR` response naming the problem, so a batch never fails as a whole.

use std::path::PathBuf;

/// Why an executor, a pool or a client could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A configuration field is out of range.
    #[error("invalid config field `{field}`: {reason}")]
    InvalidConfig {
        /// The field, as `section.name`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The host cannot give the isolation the sandbox needs.
    #[error(
        "the sandbox is unavailable on this host ({step}): {reason}; run the executor as \
         root on a kernel with pid/mount/net/ipc/uts namespaces and seccomp, or pass \
         --unsafe-no-sandbox to run untrusted code WITHOUT isolation"
    )]
    SandboxUnavailable {
        /// The set-up step that failed (privileges, namespaces, root filesystem,
        /// self-check, ...).
        step: String,
        /// What the host said.
        reason: String,
    },

    /// The interpreter could not be started.
    #[error("cannot start {python}: {source}")]
    Spawn {
        /// The interpreter's path.
        python: PathBuf,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },

    /// A sandbox slot's fork-server failed (it is restarted).
    #[error("sandbox slot {slot}: {reason}")]
    Slot {
        /// The slot's index.
        slot: usize,
        /// What went wrong.
        reason: String,
    },

    /// The pool was shut down while the request waited.
    #[error("the executor pool is shut down")]
    PoolClosed,

    /// The seccomp filter could not be compiled for this architecture.
    #[error("cannot build the seccomp filter: {0}")]
    Seccomp(String),

    /// An executor endpoint is not a usable address.
    #[error("bad executor endpoint `{endpoint}`: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is unusable.
        reason: String,
    },

    /// A client was built without endpoints.
    #[error("no executor endpoints given")]
    NoEndpoints,

    /// Every attempt failed; the last failure is reported.
    #[error("scoring failed after {attempts} attempts; last error from {endpoint}: {status}")]
    AttemptsExhausted {
        /// Attempts made.
        attempts: usize,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Its gRPC status.
        status: String,
    },

    /// An endpoint rejected the request as invalid (not retried).
    #[error("executor {endpoint} rejected the request: {message}")]
    Rejected {
        /// The endpoint that rejected it.
        endpoint: String,
        /// Its explanation.
        message: String,
    },

    /// The gRPC server failed.
    #[error("executor service on {address}: {source}")]
    Serve {
        /// The address served.
        address: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A data file has a malformed line.
    #[error("{path} line {line}: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}
