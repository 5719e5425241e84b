//! The `[broadcast]` config section: where adapters go and how long each step may take.
//!
//! One struct serves both transports; the in-process transport only reads
//! `max_adapter_bytes`. Defaults are the production settings (DESIGN.md: NATS with
//! JetStream on the cluster, adapters of ~148 MB for Qwen2.5-1.5B at r=64).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::BroadcastError;

/// How the object-store bucket keeps its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// On the server's disk: survives a nats-server restart, so workers that reconnect
    /// (or join late) still find the newest adapter.
    #[default]
    File,
    /// In the server's memory: faster, lost when the server restarts.
    Memory,
}

impl From<StorageKind> for async_nats::jetstream::stream::StorageType {
    fn from(kind: StorageKind) -> Self {
        match kind {
            StorageKind::File => Self::File,
            StorageKind::Memory => Self::Memory,
        }
    }
}

/// Settings of the adapter broadcast (`[broadcast]` in the run's TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BroadcastConfig {
    /// NATS server URL(s), comma separated (`nats://host:4222`).
    pub url: String,
    /// Prefix of the object-store bucket; the bucket is `{bucket_prefix}-{run_id}`.
    pub bucket_prefix: String,
    /// Prefix of the announcement subject; the subject is
    /// `{subject_prefix}.{run_id}.announce`.
    pub subject_prefix: String,
    /// How many adapter versions the publisher keeps in the bucket (the newest ones); older
    /// objects are deleted after each publish. At least 1; 2 or more lets a worker that is
    /// still downloading version N finish while N+1 is published.
    pub keep_last: usize,
    /// Bytes per object-store chunk (one JetStream message each). Must fit the server's
    /// `max_payload` (1 MiB by default). Large chunks mean fewer acknowledged round trips.
    pub chunk_size: usize,
    /// Where the bucket and the announcement stream keep their data.
    pub storage: StorageKind,
    /// Deadline for the first connection to the server, in seconds.
    pub connect_timeout_s: f64,
    /// Deadline for each JetStream API call (create/get bucket or stream, announce, delete,
    /// look up the latest announcement), in seconds.
    pub request_timeout_s: f64,
    /// Deadline for moving one whole adapter into or out of the object store, in seconds.
    pub transfer_timeout_s: f64,
    /// How often a subscriber asks the server for the latest announcement even when none
    /// arrived live (it also asks at start and after every reconnect), in seconds. This is
    /// the bound on how long a missed announcement can go unnoticed.
    pub resync_interval_s: f64,
    /// Announcements of larger adapters are refused before any byte is fetched, so a
    /// bogus announcement cannot make a worker allocate without bound.
    pub max_adapter_bytes: u64,
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_string(),
            bucket_prefix: "tgrpo-adapters".to_string(),
            subject_prefix: "tgrpo.adapters".to_string(),
            keep_last: 3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            storage: StorageKind::File,
            connect_timeout_s: 10.0,
            request_timeout_s: 10.0,
            transfer_timeout_s: 120.0,
            resync_interval_s: 5.0,
            max_adapter_bytes: 4 << 30,
        }
    }
}

/// The default chunk size, 512 KiB, chosen with `tgrpo bench broadcast` (148 MB to two
/// subscribers over loopback): 128 KiB chunks were the slowest (1127 acknowledged round
/// trips per upload), 512 KiB and 1 MiB were within noise of each other with 512 KiB ahead
/// in most runs, and 512 KiB stays clear of servers configured with a smaller
/// `max_payload`.
pub const DEFAULT_CHUNK_SIZE: usize = 512 << 10;

impl BroadcastConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), BroadcastError> {
        if self.url.trim().is_empty() {
            return Err(invalid("url", "is empty"));
        }
        if !is_name_token(&self.bucket_prefix) {
            return Err(invalid(
                "bucket_prefix",
                format!(
                    "`{}` must be non-empty and use only A-Z a-z 0-9 _ -",
                    self.bucket_prefix
                ),
            ));
        }
        if self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .split('.')
                .any(|token| !is_name_token(token))
        {
            return Err(invalid(
                "subject_prefix",
                format!(
                    "`{}` must be dot-separated tokens of A-Z a-z 0-9 _ - (no wildcards)",
                    self.subject_prefix
                ),
            ));
        }
        if self.keep_last == 0 {
            return Err(invalid("keep_last", "must be at least 1"));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(invalid(
                "chunk_size",
                format!(
                    "is {}, must be within {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes",
                    self.chunk_size
                ),
            ));
        }
        for (field, seconds) in [
            ("connect_timeout_s", self.connect_timeout_s),
            ("request_timeout_s", self.request_timeout_s),
            ("transfer_timeout_s", self.transfer_timeout_s),
            ("resync_interval_s", self.resync_interval_s),
        ] {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
                return Err(invalid(
                    field,
                    format!("is {seconds}, must be a positive number of seconds up to a day"),
                ));
            }
        }
        if self.max_adapter_bytes == 0 {
            return Err(invalid("max_adapter_bytes", "must be positive"));
        }
        Ok(())
    }

    /// [`Self::connect_timeout_s`] as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_s)
    }

    /// [`Self::request_timeout_s`] as a [`Duration`].
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_s)
    }

    /// [`Self::transfer_timeout_s`] as a [`Duration`].
    pub fn transfer_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.transfer_timeout_s)
    }

    /// [`Self::resync_interval_s`] as a [`Duration`].
    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs_f64(self.resync_interval_s)
    }
}

/// Chunks below this make a 148 MB adapter take thousands of acknowledged round trips.
const MIN_CHUNK_SIZE: usize = 4 << 10;
/// NATS's default `max_payload`; the publisher also checks the connected server's value.
const MAX_CHUNK_SIZE: usize = 1 << 20;

fn invalid(field: &'static str, reason: impl Into<String>) -> BroadcastError {
    BroadcastError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// Whether `token` can be used as-is in a bucket name, stream name and subject token.
pub(crate) fn is_name_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BroadcastConfig::default().validate().unwrap();
    }

    #[test]
    fn parses_partial_toml_with_defaults() {
        let config: BroadcastConfig =
            toml::from_str("url = \"nats://nats:4222\"\nkeep_last = 5\nstorage = \"memory\"")
                .unwrap();
        assert_eq!(config.url, "nats://nats:4222");
        assert_eq!(config.keep_last, 5);
        assert_eq!(config.storage, StorageKind::Memory);
        assert_eq!(config.chunk_size, DEFAULT_CHUNK_SIZE);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let error = toml::from_str::<BroadcastConfig>("keep_lats = 5").unwrap_err();
        assert!(error.to_string().contains("keep_lats"), "{error}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Mutation = Box<dyn Fn(&mut BroadcastConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("url", Box::new(|c| c.url = " ".into())),
            (
                "bucket_prefix",
                Box::new(|c| c.bucket_prefix = "a.b".into()),
            ),
            (
                "subject_prefix",
                Box::new(|c| c.subject_prefix = "a.*".into()),
            ),
            (
                "subject_prefix",
                Box::new(|c| c.subject_prefix = "a..b".into()),
            ),
            ("keep_last", Box::new(|c| c.keep_last = 0)),
            ("chunk_size", Box::new(|c| c.chunk_size = 2 << 20)),
            ("chunk_size", Box::new(|c| c.chunk_size = 100)),
            ("connect_timeout_s", Box::new(|c| c.connect_timeout_s = 0.0)),
            (
                "request_timeout_s",
                Box::new(|c| c.request_timeout_s = f64::NAN),
            ),
            (
                "transfer_timeout_s",
                Box::new(|c| c.transfer_timeout_s = -1.0),
            ),
            ("resync_interval_s", Box::new(|c| c.resync_interval_s = 1e9)),
            ("max_adapter_bytes", Box::new(|c| c.max_adapter_bytes = 0)),
        ];
        for (field, mutate) in cases {
            let mut config = BroadcastConfig::default();
            mutate(&mut config);
            let error = config.validate().unwrap_err();
            assert!(
                matches!(&error, BroadcastError::InvalidConfig { field: f, .. } if *f == field),
                "expected {field}, got {error}"
            );
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}
