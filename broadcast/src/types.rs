//! The values that travel through the broadcast: digests, announcements, loaded
//! generations, publish receipts and the subscriber's observable state.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest; shown and serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Hashes `bytes` on the calling thread (about 2 GB/s with SHA-NI; large inputs belong
    /// on a blocking thread).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, hex::FromHexError> {
        let mut digest = [0_u8; 32];
        hex::decode_to_slice(text, &mut digest)?;
        Ok(Self(digest))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(|error| {
            serde::de::Error::custom(format!("sha256 `{text}` is not 64 hex digits: {error}"))
        })
    }
}

/// The announcement of one adapter version: what a subscriber must fetch and what it must
/// find. On NATS this is the JSON payload of `{subject_prefix}.{run_id}.announce`, e.g.
///
/// ```json
/// {"run_id":"run-7","version":42,"size":147849216,
///  "sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
///  "object":"adapter-00000000000000000042.safetensors","published_at_ms":1767225600000}
/// ```
///
/// Unknown fields are ignored so that newer publishers can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The run this adapter belongs to (also part of the subject and bucket names).
    pub run_id: String,
    /// The adapter version; strictly increasing within a run.
    pub version: u64,
    /// Size of the safetensors bytes.
    pub size: u64,
    /// SHA-256 of the safetensors bytes, as the publisher computed it before upload.
    pub sha256: Sha256Digest,
    /// Name of the object in the run's bucket (empty for the in-process transport).
    #[serde(default)]
    pub object: String,
    /// Publisher's wall clock at announcement, milliseconds since the Unix epoch (for
    /// latency metrics only; clocks of different hosts disagree).
    #[serde(default)]
    pub published_at_ms: u64,
}

/// One loaded, verified adapter: what a rollout worker samples with.
///
/// Generations are immutable and shared as `Arc<AdapterGeneration>`; a worker swaps the
/// whole `Arc`, so a sampler never sees a half-updated adapter.
#[derive(Clone, PartialEq, Eq)]
pub struct AdapterGeneration {
    /// The adapter version.
    pub version: u64,
    /// The safetensors bytes (PEFT names), verified against `sha256`.
    pub bytes: Bytes,
    /// SHA-256 of `bytes`.
    pub sha256: Sha256Digest,
}

impl fmt::Debug for AdapterGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterGeneration")
            .field("version", &self.version)
            .field("size", &self.bytes.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// What [`crate::AdapterPublisher::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The announcement that was sent.
    pub announcement: Announcement,
    /// Number of object-store chunks written (0 in-process).
    pub chunks: usize,
    /// Versions deleted from the bucket by pruning after this publish.
    pub pruned: Vec<u64>,
    /// Time from the call to the announcement being acknowledged.
    pub elapsed: Duration,
}

/// Why a subscriber refused an announced adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The refused version.
    pub version: u64,
    /// The size the announcement promised.
    pub expected_size: u64,
    /// The size actually fetched.
    pub actual_size: u64,
    /// The digest the announcement promised.
    pub expected_sha256: Sha256Digest,
    /// The digest of what was actually fetched (`None` when the object was refused
    /// before it was read whole: too large, more bytes than listed, a link).
    pub actual_sha256: Option<Sha256Digest>,
    /// A short human-readable reason.
    pub reason: String,
}

/// A subscriber's observable state: the generation in use plus counters, for health
/// endpoints, metrics and tests. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SubscriberState {
    /// The newest verified generation, `None` until the first one has loaded.
    pub generation: Option<Arc<AdapterGeneration>>,
    /// The newest version announced (loaded or not).
    pub latest_announced: Option<u64>,
    /// How many generations were loaded and swapped in.
    pub loaded: u64,
    /// How many announced adapters were rejected (wrong size or checksum).
    pub rejected: u64,
    /// The most recent rejection.
    pub last_rejection: Option<Rejection>,
    /// How many fetches failed for reasons that may pass (server gone, deadline); the
    /// subscriber retries those at its next resync.
    pub fetch_failures: u64,
}

impl SubscriberState {
    /// The version in use, if any.
    pub fn version(&self) -> Option<u64> {
        self.generation
            .as_ref()
            .map(|generation| generation.version)
    }
}

/// Milliseconds since the Unix epoch on this host's clock (0 if the clock is before 1970).
pub(crate) fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_known_vector_and_round_trips_hex() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        let digest = Sha256Digest::of(b"abc");
        assert_eq!(
            digest.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::from_hex(&digest.to_hex()).unwrap(), digest);
        assert!(Sha256Digest::from_hex("abc").is_err());
    }

    #[test]
    fn announcement_json_round_trips_and_ignores_unknown_fields() {
        let announcement = Announcement {
            run_id: "run-1".into(),
            version: 42,
            size: 3,
            sha256: Sha256Digest::of(b"abc"),
            object: "adapter-00000000000000000042.safetensors".into(),
            published_at_ms: 1,
        };
        let json = serde_json::to_value(&announcement).unwrap();
        assert_eq!(
            json["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut extended = json.clone();
        extended["future_field"] = serde_json::json!(true);
        let decoded: Announcement = serde_json::from_value(extended).unwrap();
        assert_eq!(decoded, announcement);

        let mut bad = json;
        bad["sha256"] = serde_json::json!("xyz");
        let error = serde_json::from_value::<Announcement>(bad).unwrap_err();
        assert!(error.to_string().contains("xyz"), "{error}");
    }
}
