//! The crate's one error type. A malformed *request* is not an error: it gets a
//! `VERDICT_ERROR` response naming the problem, so a batch never fails as a whole.

use std::path::PathBuf;

/// Why an executor, a pool or a client could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A configuration field is out of range.
    #[error("invalid config field `{field}`: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// The host cannot give the isolation the sandbox needs.
    #[error(
        "the sandbox is unavailable on this host ({step}): {reason}; run the executor as \
         root on a kernel with pid/mount/net/ipc/uts namespaces and seccomp, or pass \
         --unsafe-no-sandbox to run untrusted code WITHOUT isolation"
    )]
    SandboxUnavailable { step: String, reason: String },

    /// The interpreter could not be started.
    #[error("cannot start {python}: {source}")]
    Spawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A sandbox slot's fork-server failed (it is restarted).
    #[error("sandbox slot {slot}: {reason}")]
    Slot { slot: usize, reason: String },

    /// The pool was shut down while the request waited.
    #[error("the executor pool is shut down")]
    PoolClosed,

    /// The seccomp filter could not be compiled for this architecture.
    #[error("cannot build the seccomp filter: {0}")]
    Seccomp(String),

    /// An executor endpoint is not a usable address.
    #[error("bad executor endpoint `{endpoint}`: {reason}")]
    BadEndpoint { endpoint: String, reason: String },

    /// A client was built without endpoints.
    #[error("no executor endpoints given")]
    NoEndpoints,

    /// Every attempt failed; the last failure is reported.
    #[error("scoring failed after {attempts} attempts; last error from {endpoint}: {status}")]
    AttemptsExhausted {
        attempts: usize,
        endpoint: String,
        status: String,
    },

    /// An endpoint rejected the request as invalid (not retried).
    #[error("executor {endpoint} rejected the request: {message}")]
    Rejected { endpoint: String, message: String },

    /// The gRPC server failed.
    #[error("executor service on {address}: {source}")]
    Serve {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A data file has a malformed line.
    #[error("{path} line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}
