//! The in-process transport, for local single-node mode (every role in one process).
//!
//! The publisher puts `(announcement, bytes)` into a `watch` channel that holds only the
//! newest publication, so a subscriber busy verifying version N skips straight to the
//! newest one afterwards, and a late subscriber starts with the newest. Bytes are shared,
//! not copied. Each subscriber still verifies size and SHA-256 itself, exactly like the
//! NATS transport, so both transports behave the same (and local mode exercises the same
//! code path the cluster uses); that costs one hash per subscriber and version, about
//! 0.1 s for a 148 MB adapter on a blocking thread.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BroadcastConfig;
use crate::error::BroadcastError;
use crate::subscriber::{AdapterSubscriber, SubscriberCore};
use crate::types::{Announcement, PublishReceipt, Sha256Digest, unix_millis_now};

/// One published adapter as it travels in-process.
#[derive(Debug)]
struct Publication {
    announcement: Announcement,
    bytes: Bytes,
}

/// The in-process broadcast of one run: hands out publishers and subscribers that share
/// one channel. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tgrpo_broadcast::BroadcastError> {
/// use tgrpo_broadcast::{BroadcastConfig, LocalBroadcast};
/// let broadcast = LocalBroadcast::new("demo", &BroadcastConfig::default())?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let mut subscriber = broadcast.subscribe(&shutdown);
/// broadcast.publisher().publish(1, b"adapter bytes".to_vec()).await?;
/// assert_eq!(subscriber.changed().await?.version, 1);
/// subscriber.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LocalBroadcast {
    run_id: Arc<str>,
    max_adapter_bytes: u64,
    sender: Arc<watch::Sender<Option<Arc<Publication>>>>,
    /// Serializes publishes, so the channel ends on the version published last even when
    /// two publishes race through hashing.
    serial: Arc<tokio::sync::Mutex<()>>,
}

impl LocalBroadcast {
    /// A fresh channel for `run_id`; only `max_adapter_bytes` of `config` applies here.
    pub fn new(run_id: &str, config: &BroadcastConfig) -> Result<Self, BroadcastError> {
        crate::nats::validate_run_id(run_id)?;
        config.validate()?;
        let (sender, _receiver) = watch::channel(None);
        Ok(Self {
            run_id: run_id.into(),
            max_adapter_bytes: config.max_adapter_bytes,
            sender: Arc::new(sender),
            serial: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A publisher for this run (the learner's end).
    pub fn publisher(&self) -> crate::AdapterPublisher {
        crate::AdapterPublisher::from_local(LocalPublisher {
            broadcast: self.clone(),
        })
    }

    /// A new subscriber (a rollout worker's end). It starts with the newest publication,
    /// if any, and stops when `shutdown` is cancelled or when this broadcast and all its
    /// publishers are dropped.
    pub fn subscribe(&self, shutdown: &CancellationToken) -> AdapterSubscriber {
        let (core, state) = SubscriberCore::new(Arc::clone(&self.run_id), "local");
        let mut publications = self.sender.subscribe();
        // A late joiner must process what is already there, not only what comes next.
        publications.mark_changed();
        let cancel = shutdown.child_token();
        let task_cancel = cancel.clone();
        AdapterSubscriber::spawn(Arc::clone(&self.run_id), state, cancel, async move {
            run_subscriber(core, publications, task_cancel).await;
        })
    }
}

/// The publishing end of a [`LocalBroadcast`].
#[derive(Debug, Clone)]
pub(crate) struct LocalPublisher {
    broadcast: LocalBroadcast,
}

impl LocalPublisher {
    pub(crate) fn run_id(&self) -> &str {
        &self.broadcast.run_id
    }

    /// The version of the newest publication in the channel.
    pub(crate) fn latest_version(&self) -> Option<u64> {
        self.broadcast
            .sender
            .borrow()
            .as_ref()
            .map(|publication| publication.announcement.version)
    }

    /// Hashes and hands out `bytes` as `version`; `announced_sha256` replaces the true
    /// digest in the announcement (only for tests of the rejection path).
    pub(crate) async fn publish(
        &self,
        version: u64,
        bytes: Bytes,
        announced_sha256: Option<Sha256Digest>,
    ) -> Result<PublishReceipt, BroadcastError> {
        let started = Instant::now();
        let size = bytes.len() as u64;
        if size > self.broadcast.max_adapter_bytes {
            return Err(BroadcastError::TooLarge {
                version,
                size,
                max: self.broadcast.max_adapter_bytes,
            });
        }
        let _serial = self.broadcast.serial.lock().await;
        let sha256 = match announced_sha256 {
            Some(digest) => digest,
            None => hash_blocking(version, bytes.clone()).await?,
        };
        let announcement = Announcement {
            run_id: self.broadcast.run_id.to_string(),
            version,
            size,
            sha256,
            object: String::new(),
            published_at_ms: unix_millis_now(),
        };
        self.broadcast
            .sender
            .send_replace(Some(Arc::new(Publication {
                announcement: announcement.clone(),
                bytes,
            })));
        tracing::info!(run_id = %self.broadcast.run_id, version, size, %sha256, "adapter published in-process");
        Ok(PublishReceipt {
            announcement,
            chunks: 0,
            pruned: Vec::new(),
            elapsed: started.elapsed(),
        })
    }
}

/// Hashes on a blocking thread: 148 MB take ~0.1 s, far beyond what an async task may block.
pub(crate) async fn hash_blocking(
    version: u64,
    bytes: Bytes,
) -> Result<Sha256Digest, BroadcastError> {
    tokio::task::spawn_blocking(move || Sha256Digest::of(&bytes))
        .await
        .map_err(|source| BroadcastError::Hashing { version, source })
}

async fn run_subscriber(
    core: SubscriberCore,
    mut publications: watch::Receiver<Option<Arc<Publication>>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = core.closed() => break,
            changed = publications.changed() => {
                if changed.is_err() {
                    tracing::debug!(run_id = core.run_id(), "every local publisher is gone; subscriber stops");
                    break;
                }
            }
        }
        let Some(publication) = publications.borrow_and_update().clone() else {
            continue;
        };
        let announcement = &publication.announcement;
        core.note_announced(announcement.version);
        if !core.wants(announcement) {
            continue;
        }
        let digest = tokio::select! {
            () = cancel.cancelled() => break,
            digest = hash_blocking(announcement.version, publication.bytes.clone()) => digest,
        };
        match digest {
            Ok(digest) => {
                core.offer(announcement, publication.bytes.clone(), digest);
            }
            Err(error) => core.note_fetch_failure(announcement.version, &error),
        }
    }
}
