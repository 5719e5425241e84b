//! Adapter broadcast: the learner publishes each new LoRA adapter version, every rollout
//! worker picks up the newest one quickly and safely.
//!
//! One interface, two transports:
//!
//! - **in-process** ([`LocalBroadcast`]) for local single-node mode, where every role runs
//!   in one process: a `watch` channel that always holds the newest publication;
//! - **NATS JetStream** ([`NatsBroadcast`]) for the distributed mode: the safetensors bytes
//!   go into a JetStream object-store bucket (chunked; adapters are ~148 MB, far above
//!   NATS's 1 MB message limit), then a JSON [`Announcement`] (run id, version, size,
//!   sha256) goes out on a subject. See [`nats`] for the names and the protocol.
//!
//! Both hand out the same two types. [`AdapterPublisher::publish`] uploads and announces a
//! version. [`AdapterSubscriber`] holds the newest verified [`AdapterGeneration`]
//! (`latest()` without waiting, `changed().await` for the next one). A subscriber:
//!
//! - fetches only the newest announced version, skipping ones it missed, never going
//!   backwards;
//! - verifies size and SHA-256 itself and swaps whole generations (`Arc`), so no sampler
//!   ever sees a half-loaded adapter;
//! - rejects a corrupted adapter, logs it with the version and both digests, keeps the old
//!   generation and counts it ([`SubscriberState::rejected`]);
//! - starts from the newest published version when it joins late, and catches up after a
//!   NATS reconnect.
//!
//! The publisher prunes the bucket to the `keep_last` most recent versions. The run id is
//! part of every name, so concurrent runs on one server stay apart.
//!
//! # Layout
//!
//! - `config`: [`BroadcastConfig`], the `[broadcast]` section.
//! - `types`: [`Announcement`] (the wire payload), [`AdapterGeneration`], [`PublishReceipt`],
//!   [`SubscriberState`], [`Rejection`], [`Sha256Digest`].
//! - `subscriber`: [`AdapterSubscriber`] and the verification shared by both transports.
//! - `local`: the in-process transport.
//! - [`nats`]: the NATS JetStream transport.
//! - [`bench`]: the broadcast-latency benchmark behind `tgrpo bench broadcast`.
//! - [`testing`] (feature `testing`): start and stop a private nats-server for tests.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tgrpo_broadcast::BroadcastError> {
//! use tgrpo_broadcast::{Broadcast, BroadcastConfig};
//! let broadcast = Broadcast::local("demo", &BroadcastConfig::default())?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let mut subscriber = broadcast.subscribe(&shutdown);
//! let publisher = broadcast.publisher().await?;
//! publisher.publish(1, vec![0_u8; 1024]).await?;
//! let generation = subscriber.changed().await?;
//! assert_eq!((generation.version, generation.bytes.len()), (1, 1024));
//! shutdown.cancel();
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod bench;
mod config;
mod error;
mod local;
pub mod nats;
mod subscriber;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use config::{BroadcastConfig, DEFAULT_CHUNK_SIZE, StorageKind};
pub use error::{BoxError, BroadcastError};
pub use local::LocalBroadcast;
pub use nats::{NatsBroadcast, NatsNames};
pub use subscriber::AdapterSubscriber;
pub use types::{
    AdapterGeneration, Announcement, PublishReceipt, Rejection, Sha256Digest, SubscriberState,
};

/// A broadcast of one run over either transport; the learner and the rollout workers
/// only deal with this, so local and distributed mode share one code path.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// In-process (local single-node mode).
    Local(LocalBroadcast),
    /// NATS JetStream (distributed mode).
    Nats(NatsBroadcast),
}

impl Broadcast {
    /// An in-process broadcast for `run_id`.
    pub fn local(run_id: &str, config: &BroadcastConfig) -> Result<Self, BroadcastError> {
        LocalBroadcast::new(run_id, config).map(Self::Local)
    }

    /// A NATS broadcast for `run_id`, connected to `config.url`.
    pub async fn connect_nats(
        run_id: &str,
        config: &BroadcastConfig,
    ) -> Result<Self, BroadcastError> {
        NatsBroadcast::connect(run_id, config).await.map(Self::Nats)
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        match self {
            Self::Local(local) => local.run_id(),
            Self::Nats(nats) => nats.run_id(),
        }
    }

    /// The learner's end (on NATS, creates the bucket and stream when missing).
    pub async fn publisher(&self) -> Result<AdapterPublisher, BroadcastError> {
        match self {
            Self::Local(local) => Ok(local.publisher()),
            Self::Nats(nats) => nats.publisher().await,
        }
    }

    /// A rollout worker's end; stops when `shutdown` is cancelled.
    pub fn subscribe(&self, shutdown: &CancellationToken) -> AdapterSubscriber {
        match self {
            Self::Local(local) => local.subscribe(shutdown),
            Self::Nats(nats) => nats.subscribe(shutdown),
        }
    }
}

/// The learner's end of a broadcast: publishes adapter versions. Cheap to clone;
/// concurrent publishes are serialized.
#[derive(Debug, Clone)]
pub struct AdapterPublisher {
    inner: PublisherInner,
}

#[derive(Debug, Clone)]
enum PublisherInner {
    Local(local::LocalPublisher),
    Nats(nats::NatsPublisher),
}

impl AdapterPublisher {
    fn from_local(publisher: local::LocalPublisher) -> Self {
        Self {
            inner: PublisherInner::Local(publisher),
        }
    }

    fn from_nats(publisher: nats::NatsPublisher) -> Self {
        Self {
            inner: PublisherInner::Nats(publisher),
        }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        match &self.inner {
            PublisherInner::Local(local) => local.run_id(),
            PublisherInner::Nats(nats) => nats.run_id(),
        }
    }

    /// Publishes `bytes` (an adapter's safetensors) as `version`: hashes it, uploads it
    /// (NATS), announces it, prunes old versions (NATS). Versions must increase within a
    /// run: subscribers ignore a version that is not newer than the one they hold.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(publisher: tgrpo_broadcast::AdapterPublisher, step: u64, adapter: Vec<u8>) -> Result<(), tgrpo_broadcast::BroadcastError> {
    /// let receipt = publisher.publish(step + 1, adapter).await?;
    /// println!("v{} sha256 {} in {:?}", receipt.announcement.version, receipt.announcement.sha256, receipt.elapsed);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(
        &self,
        version: u64,
        bytes: impl Into<Bytes>,
    ) -> Result<PublishReceipt, BroadcastError> {
        self.publish_inner(version, bytes.into(), None).await
    }

    /// The newest version announced for this run so far: by this publisher, or (NATS) by
    /// any earlier publisher of the same run id, such as a learner that crashed and is
    /// being resumed. A resumed learner numbers its versions above it, because
    /// subscribers never go back to a version they have passed. `None` when nothing was
    /// announced yet.
    pub async fn latest_announced_version(&self) -> Result<Option<u64>, BroadcastError> {
        match &self.inner {
            PublisherInner::Local(local) => Ok(local.latest_version()),
            PublisherInner::Nats(nats) => nats.latest_version().await,
        }
    }

    /// Like [`Self::publish`], but announces `announced_sha256` instead of the true
    /// digest: what a corrupted upload looks like to subscribers. For tests only.
    #[cfg(feature = "testing")]
    pub async fn publish_with_announced_digest(
        &self,
        version: u64,
        bytes: impl Into<Bytes>,
        announced_sha256: Sha256Digest,
    ) -> Result<PublishReceipt, BroadcastError> {
        self.publish_inner(version, bytes.into(), Some(announced_sha256))
            .await
    }

    async fn publish_inner(
        &self,
        version: u64,
        bytes: Bytes,
        announced_sha256: Option<Sha256Digest>,
    ) -> Result<PublishReceipt, BroadcastError> {
        match &self.inner {
            PublisherInner::Local(local) => local.publish(version, bytes, announced_sha256).await,
            PublisherInner::Nats(nats) => nats.publish(version, bytes, announced_sha256).await,
        }
    }
}
