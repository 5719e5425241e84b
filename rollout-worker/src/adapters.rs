//! New adapters for the worker's policy: where they come from ([`AdapterFeed`]) and how
//! they go into the model ([`AdapterInstaller`]).
//!
//! The broadcast subscriber already verified size and SHA-256 of every generation it hands
//! out. What it cannot know is whether the bytes are an adapter *for this model*: the
//! installer parses them against the model's shapes on a blocking thread and swaps them
//! into the policy's [`AdapterSlot`](tgrpo_policy::AdapterSlot) only when that succeeds.
//! An adapter that does not load is logged with its version, counted, and never retried
//! (the broadcast does not resend a version); the old adapter stays in use until a newer
//! version loads.

use std::sync::Arc;
use std::time::Duration;

use tgrpo_broadcast::{AdapterGeneration, AdapterSubscriber, Broadcast, BroadcastConfig};
use tgrpo_policy::Policy;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffConfig};

/// Where a worker's adapters come from.
#[derive(Debug, Default)]
pub enum AdapterFeed {
    /// No broadcast: the worker samples with whatever its policy holds (the base model).
    #[default]
    None,
    /// A subscriber (in-process or NATS).
    Subscriber(AdapterSubscriber),
    /// A subscriber still being connected in the background (NATS away at start).
    Connecting(oneshot::Receiver<AdapterSubscriber>),
}

impl AdapterFeed {
    /// Feeds from `subscriber`.
    pub fn subscriber(subscriber: AdapterSubscriber) -> Self {
        Self::Subscriber(subscriber)
    }

    /// Connects to NATS in the background, retrying with `backoff` until it succeeds or
    /// `shutdown` fires; the worker samples with the adapter it holds meanwhile.
    pub fn connect_nats(
        run_id: String,
        config: BroadcastConfig,
        backoff: BackoffConfig,
        shutdown: &CancellationToken,
    ) -> Self {
        let (ready, receiver) = oneshot::channel();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(backoff);
            loop {
                match Broadcast::connect_nats(&run_id, &config).await {
                    Ok(broadcast) => {
                        tracing::info!(url = %config.url, %run_id, "subscribed to the adapter broadcast");
                        let _ = ready.send(broadcast.subscribe(&shutdown));
                        return;
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(url = %config.url, error = %error_chain(&err), retry_in_ms = delay.as_millis() as u64, "nats unreachable; sampling with the current adapter meanwhile");
                        if !crate::backoff::sleep_or_cancel(delay, &shutdown).await {
                            return;
                        }
                    }
                }
            }
        });
        Self::Connecting(receiver)
    }

    /// Moves a finished background connection into place.
    fn poll_connected(&mut self) {
        if let Self::Connecting(receiver) = self {
            match receiver.try_recv() {
                Ok(subscriber) => *self = Self::Subscriber(subscriber),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => *self = Self::None,
            }
        }
    }

    /// The newest verified generation, without waiting.
    pub fn latest(&mut self) -> Option<Arc<AdapterGeneration>> {
        self.poll_connected();
        match self {
            Self::Subscriber(subscriber) => subscriber.latest(),
            Self::None | Self::Connecting(_) => None,
        }
    }

    /// Waits up to `patience` for a generation with version ≥ `version`; returns whether
    /// one arrived. Returns at once when there is no feed.
    pub async fn wait_for_version(&mut self, version: u64, patience: Duration) -> bool {
        let wait = async {
            if let Self::Connecting(receiver) = self {
                match receiver.await {
                    Ok(subscriber) => *self = Self::Subscriber(subscriber),
                    Err(_) => {
                        *self = Self::None;
                        return false;
                    }
                }
            }
            match self {
                Self::Subscriber(subscriber) => subscriber.wait_for_version(version).await.is_ok(),
                Self::None | Self::Connecting(_) => false,
            }
        };
        tokio::time::timeout(patience, wait).await.unwrap_or(false)
    }

    /// Whether adapters can ever arrive.
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }
}

/// Installs adapter generations into a policy, remembering what failed.
#[derive(Debug)]
pub struct AdapterInstaller {
    policy: Policy,
    failed_version: Option<u64>,
    loaded: u64,
    failed: u64,
}

/// What [`AdapterInstaller::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Nothing newer than the installed adapter (or it failed before).
    Unchanged,
    /// The generation is in the policy now.
    Installed(u64),
    /// The generation did not load; the previous adapter stays.
    Failed(u64),
}

impl AdapterInstaller {
    /// An installer for `policy`'s adapter slot.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            failed_version: None,
            loaded: 0,
            failed: 0,
        }
    }

    /// The installed version (`None`: the base model).
    pub fn installed(&self) -> Option<u64> {
        self.policy.adapter_slot().version()
    }

    /// Adapters installed so far.
    pub fn loaded(&self) -> u64 {
        self.loaded
    }

    /// Adapters that failed to load so far.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Installs `generation` when it is newer than the installed adapter; parsing runs on
    /// a blocking thread (a production adapter is ~150 MB).
    pub async fn offer(&mut self, generation: Arc<AdapterGeneration>) -> InstallOutcome {
        let version = generation.version;
        let newer = self.installed().is_none_or(|installed| version > installed);
        if !newer || self.failed_version == Some(version) {
            return InstallOutcome::Unchanged;
        }
        let policy = self.policy.clone();
        let work = Arc::clone(&generation);
        let result = tokio::task::spawn_blocking(move || {
            policy.install_adapter_bytes(work.version, &work.bytes, None)
        })
        .await;
        let error = match result {
            Ok(Ok(())) => {
                self.loaded += 1;
                tracing::info!(version, size = generation.bytes.len(), sha256 = %generation.sha256, "adapter installed");
                return InstallOutcome::Installed(version);
            }
            Ok(Err(err)) => error_chain(&err),
            Err(join) => format!("loader thread failed: {join}"),
        };
        self.failed += 1;
        self.failed_version = Some(version);
        tracing::error!(version, sha256 = %generation.sha256, kept = ?self.installed(), %error, "adapter does not load into this model; keeping the previous one");
        InstallOutcome::Failed(version)
    }
}

/// An error with its sources, for one log line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
