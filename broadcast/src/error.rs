//! The crate's one error type.
//!
//! Every variant names what it was doing and with which input (URL, bucket, subject,
//! version, config field), so a log line is enough to find the cause. A corrupted adapter
//! is *not* an error here: the subscriber rejects it, keeps its old generation and records
//! a [`crate::Rejection`] in its observable state, because the caller can do nothing about it.

use std::time::Duration;

/// A boxed source error from the NATS client (each async-nats call has its own error kind).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while publishing or subscribing to adapters.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// A config field holds a value that cannot work.
    #[error("invalid broadcast config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field, as spelled in the TOML section.
        field: &'static str,
        /// Why the value is rejected.
        reason: String,
    },

    /// A run id that cannot be used in bucket, stream and subject names.
    #[error("invalid run id `{run_id}`: {reason}")]
    InvalidRunId {
        /// The rejected run id.
        run_id: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// The first connection to the NATS server failed.
    #[error("cannot connect to nats at {url}")]
    Connect {
        /// The configured server URL.
        url: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },

    /// A NATS operation did not finish within its deadline.
    #[error("{operation} on {target} timed out after {after:?}")]
    Timeout {
        /// What was being done (`"put object"`, `"announce"`, ...).
        operation: &'static str,
        /// The bucket, object or subject it was done on.
        target: String,
        /// The deadline that expired.
        after: Duration,
    },

    /// A NATS operation failed.
    #[error("{operation} on {target} failed")]
    Nats {
        /// What was being done.
        operation: &'static str,
        /// The bucket, object or subject it was done on.
        target: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },

    /// An adapter larger than `max_adapter_bytes` was offered or announced.
    #[error("adapter version {version} has {size} bytes, above max_adapter_bytes = {max}")]
    TooLarge {
        /// The adapter version.
        version: u64,
        /// Its size in bytes.
        size: u64,
        /// The configured limit.
        max: u64,
    },

    /// An announcement payload that does not decode.
    #[error("bad announcement on {subject}")]
    BadAnnouncement {
        /// The subject it arrived on.
        subject: String,
        /// The decoding error.
        #[source]
        source: BoxError,
    },

    /// The transport behind a subscriber has stopped (shutdown, or every publisher gone
    /// in local mode), so no newer generation can arrive.
    #[error("adapter subscriber for run {run_id} is closed")]
    Closed {
        /// The run the subscriber belonged to.
        run_id: String,
    },

    /// A blocking helper task (hashing) panicked or was cancelled.
    #[error("hashing task for adapter version {version} failed")]
    Hashing {
        /// The adapter version being hashed.
        version: u64,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl BroadcastError {
    /// Wraps a NATS client error with what was being done and on what.
    pub(crate) fn nats(
        operation: &'static str,
        target: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Nats {
            operation,
            target: target.into(),
            source: source.into(),
        }
    }

    /// Whether the error is a NATS timeout or failure that may go away by itself
    /// (the server restarting, a slow disk); the subscriber retries those later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Nats { .. })
    }
}

/// Runs `future` under a deadline, turning expiry into [`BroadcastError::Timeout`] and a
/// client error into [`BroadcastError::Nats`]. Every NATS call in this crate goes through it.
pub(crate) async fn with_deadline<T, E>(
    operation: &'static str,
    target: impl Into<String>,
    after: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, BroadcastError>
where
    E: Into<BoxError>,
{
    match tokio::time::timeout(after, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(BroadcastError::nats(operation, target, source)),
        Err(_elapsed) => Err(BroadcastError::Timeout {
            operation,
            target: target.into(),
            after,
        }),
    }
}
