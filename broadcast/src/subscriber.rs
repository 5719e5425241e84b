//! The subscriber side, shared by both transports.
//!
//! A transport runs one task per subscriber. The task learns of announcements, fetches the
//! bytes and hands them to [`SubscriberCore`], which verifies size and SHA-256 and swaps
//! the new generation in, or rejects it and keeps the old one. Callers hold an
//! [`AdapterSubscriber`], a cheap-clone handle over a `watch` channel of
//! [`SubscriberState`]; that handle is the same whatever the transport.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::BroadcastError;
use crate::types::{AdapterGeneration, Announcement, Rejection, Sha256Digest, SubscriberState};

/// A rollout worker's view of the broadcast: the newest verified adapter generation,
/// a way to wait for a newer one, and counters.
///
/// Clones share the same background task and state; each clone remembers separately which
/// generation [`Self::changed`] last returned to it. The task stops when the shutdown token
/// given at subscription is cancelled, on [`Self::close`], or when every clone is dropped.
///
/// # Examples
///
/// ```no_run
/// # async fn example(mut subscriber: tgrpo_broadcast::AdapterSubscriber) -> Result<(), tgrpo_broadcast::BroadcastError> {
/// // Sample with whatever is loaded now; never blocks.
/// if let Some(generation) = subscriber.latest() {
///     println!("sampling with adapter v{}", generation.version);
/// }
/// // Wait for the next verified generation and swap it into the model.
/// let generation = subscriber.changed().await?;
/// println!("loaded v{} ({} bytes)", generation.version, generation.bytes.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AdapterSubscriber {
    run_id: Arc<str>,
    state: watch::Receiver<SubscriberState>,
    last_returned_version: Option<u64>,
    task: Arc<TaskControl>,
}

/// Stops and joins the background task; shared by all clones of a subscriber.
#[derive(Debug)]
struct TaskControl {
    cancel: CancellationToken,
    handle: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl AdapterSubscriber {
    /// Spawns `task` (the transport's loop) and returns the handle over its state.
    /// `cancel` must be the token the task watches.
    pub(crate) fn spawn(
        run_id: Arc<str>,
        state: watch::Receiver<SubscriberState>,
        cancel: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let handle = tokio::spawn(task);
        Self {
            run_id,
            state,
            last_returned_version: None,
            task: Arc::new(TaskControl {
                cancel,
                handle: tokio::sync::Mutex::new(Some(handle)),
            }),
        }
    }

    /// The run this subscriber follows.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The newest verified generation, without waiting; `None` before the first load.
    pub fn latest(&self) -> Option<Arc<AdapterGeneration>> {
        self.state.borrow().generation.clone()
    }

    /// Waits for a generation newer than the one this handle last returned from
    /// [`Self::changed`] or [`Self::wait_for_version`] (on a fresh handle: any generation,
    /// including one loaded before the call), then returns it.
    ///
    /// Versions only go up: intermediate versions published while the worker was busy are
    /// skipped, never replayed. Errors only with [`BroadcastError::Closed`] when the
    /// subscriber has stopped.
    pub async fn changed(&mut self) -> Result<Arc<AdapterGeneration>, BroadcastError> {
        let after = self.last_returned_version;
        self.wait_until(|version| after.is_none_or(|after| version > after))
            .await
    }

    /// Waits until a generation with version ≥ `min_version` is loaded and returns the
    /// newest one (a rollout worker that must not sample with stale weights uses this).
    pub async fn wait_for_version(
        &mut self,
        min_version: u64,
    ) -> Result<Arc<AdapterGeneration>, BroadcastError> {
        self.wait_until(|version| version >= min_version).await
    }

    async fn wait_until(
        &mut self,
        accept: impl Fn(u64) -> bool,
    ) -> Result<Arc<AdapterGeneration>, BroadcastError> {
        let generation = {
            let state = self
                .state
                .wait_for(|state| state.version().is_some_and(&accept))
                .await
                .map_err(|_closed| BroadcastError::Closed {
                    run_id: self.run_id.to_string(),
                })?;
            state
                .generation
                .clone()
                .expect("wait_for only returns states with a generation")
        };
        self.last_returned_version = Some(generation.version);
        Ok(generation)
    }

    /// A snapshot of the observable state (generation in use and counters).
    pub fn state(&self) -> SubscriberState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change (loads, rejections, failures), for
    /// metrics, health checks and tests.
    pub fn watch_state(&self) -> watch::Receiver<SubscriberState> {
        self.state.clone()
    }

    /// Stops the background task and waits for it to finish. Generations already
    /// returned stay valid; [`Self::latest`] keeps returning the last one.
    pub async fn close(&self) {
        self.task.cancel.cancel();
        let handle = self.task.handle.lock().await.take();
        if let Some(handle) = handle
            && let Err(error) = handle.await
            && error.is_panic()
        {
            tracing::error!(run_id = %self.run_id, %error, "adapter subscriber task panicked");
        }
    }

    /// Whether the background task has finished (closed, shut down, or its transport gone).
    pub fn is_closed(&self) -> bool {
        self.state.has_changed().is_err()
    }
}

/// The verification and swap logic every transport's task uses.
#[derive(Debug)]
pub(crate) struct SubscriberCore {
    run_id: Arc<str>,
    transport: &'static str,
    state: watch::Sender<SubscriberState>,
}

impl SubscriberCore {
    /// A core with an empty state, and the receiver for the [`AdapterSubscriber`].
    pub(crate) fn new(
        run_id: Arc<str>,
        transport: &'static str,
    ) -> (Self, watch::Receiver<SubscriberState>) {
        let (state, receiver) = watch::channel(SubscriberState::default());
        (
            Self {
                run_id,
                transport,
                state,
            },
            receiver,
        )
    }

    /// The run id this core belongs to.
    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Resolves when every [`AdapterSubscriber`] clone has been dropped.
    pub(crate) async fn closed(&self) {
        self.state.closed().await;
    }

    /// The version currently loaded.
    pub(crate) fn current_version(&self) -> Option<u64> {
        self.state.borrow().version()
    }

    /// Records that `version` was announced (keeps the maximum).
    pub(crate) fn note_announced(&self, version: u64) {
        self.state.send_if_modified(|state| {
            if state
                .latest_announced
                .is_some_and(|latest| latest >= version)
            {
                return false;
            }
            state.latest_announced = Some(version);
            true
        });
    }

    /// Whether `announcement` is worth fetching: newer than what is loaded, and not the
    /// exact announcement that was last rejected (refetching it would fail the same way).
    pub(crate) fn wants(&self, announcement: &Announcement) -> bool {
        let state = self.state.borrow();
        if state
            .version()
            .is_some_and(|current| announcement.version <= current)
        {
            return false;
        }
        !state.last_rejection.as_ref().is_some_and(|rejection| {
            rejection.version == announcement.version
                && rejection.expected_sha256 == announcement.sha256
                && rejection.expected_size == announcement.size
        })
    }

    /// Verifies fetched `bytes` (whose digest the caller computed as `actual_sha256`)
    /// against `announcement`, then swaps them in, or rejects them and keeps the old
    /// generation. Returns whether the generation was swapped in.
    pub(crate) fn offer(
        &self,
        announcement: &Announcement,
        bytes: Bytes,
        actual_sha256: Sha256Digest,
    ) -> bool {
        debug_assert_eq!(announcement.run_id, *self.run_id);
        let actual_size = bytes.len() as u64;
        let reason = if actual_size != announcement.size {
            Some("size differs from the announcement")
        } else if actual_sha256 != announcement.sha256 {
            Some("sha256 differs from the announcement")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.reject(Rejection {
                version: announcement.version,
                expected_size: announcement.size,
                actual_size,
                expected_sha256: announcement.sha256,
                actual_sha256: Some(actual_sha256),
                reason: reason.to_string(),
            });
            return false;
        }
        let generation = Arc::new(AdapterGeneration {
            version: announcement.version,
            bytes,
            sha256: actual_sha256,
        });
        let swapped = self.state.send_if_modified(|state| {
            // Re-checked under the channel's lock: only ever move forward.
            if state
                .version()
                .is_some_and(|current| generation.version <= current)
            {
                return false;
            }
            state.generation = Some(Arc::clone(&generation));
            state.loaded += 1;
            state.latest_announced = Some(
                state
                    .latest_announced
                    .map_or(generation.version, |latest| latest.max(generation.version)),
            );
            true
        });
        if swapped {
            tracing::info!(
                run_id = %self.run_id,
                transport = self.transport,
                version = generation.version,
                size = actual_size,
                sha256 = %generation.sha256,
                "adapter generation loaded"
            );
        }
        swapped
    }

    /// Records a rejected adapter: logged with both digests, counted, old generation kept.
    pub(crate) fn reject(&self, rejection: Rejection) {
        let kept = self.current_version();
        tracing::error!(
            run_id = %self.run_id,
            transport = self.transport,
            version = rejection.version,
            expected_sha256 = %rejection.expected_sha256,
            actual_sha256 = %rejection
                .actual_sha256
                .map_or_else(|| "unknown".to_string(), |digest| digest.to_hex()),
            expected_size = rejection.expected_size,
            actual_size = rejection.actual_size,
            kept_version = ?kept,
            reason = %rejection.reason,
            "rejected corrupted adapter; keeping the previous generation"
        );
        self.state.send_modify(|state| {
            state.rejected += 1;
            state.last_rejection = Some(rejection);
        });
    }

    /// Records a fetch that failed for a reason that may pass; the task retries later.
    pub(crate) fn note_fetch_failure(&self, version: u64, error: &BroadcastError) {
        tracing::warn!(
            run_id = %self.run_id,
            transport = self.transport,
            version,
            error = %error_chain(error),
            "adapter fetch failed; will retry"
        );
        self.state.send_modify(|state| state.fetch_failures += 1);
    }
}

/// An error and all its sources on one line, for logs.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(version: u64, bytes: &[u8]) -> Announcement {
        Announcement {
            run_id: "r".into(),
            version,
            size: bytes.len() as u64,
            sha256: Sha256Digest::of(bytes),
            object: String::new(),
            published_at_ms: 0,
        }
    }

    #[test]
    fn offer_moves_forward_only_and_rejects_bad_digest_or_size() {
        let (core, receiver) = SubscriberCore::new("r".into(), "test");
        let one = announcement(1, b"one");
        assert!(core.wants(&one));
        assert!(core.offer(&one, Bytes::from_static(b"one"), Sha256Digest::of(b"one")));
        assert_eq!(receiver.borrow().version(), Some(1));

        // Older or equal versions are neither wanted nor swapped in.
        let zero = announcement(0, b"zero");
        assert!(!core.wants(&zero));
        assert!(!core.offer(
            &zero,
            Bytes::from_static(b"zero"),
            Sha256Digest::of(b"zero")
        ));
        assert_eq!(receiver.borrow().version(), Some(1));

        // Wrong digest: rejected, counted, old generation kept, not wanted again.
        let three = announcement(3, b"three");
        assert!(!core.offer(
            &three,
            Bytes::from_static(b"thre3"),
            Sha256Digest::of(b"thre3")
        ));
        let state = receiver.borrow().clone();
        assert_eq!(state.version(), Some(1));
        assert_eq!(state.rejected, 1);
        let rejection = state.last_rejection.unwrap();
        assert_eq!(rejection.version, 3);
        assert_eq!(rejection.expected_sha256, Sha256Digest::of(b"three"));
        assert_eq!(rejection.actual_sha256, Some(Sha256Digest::of(b"thre3")));
        assert!(!core.wants(&three));

        // Wrong size with a matching digest claim is still rejected.
        let four = announcement(4, b"four");
        assert!(!core.offer(
            &four,
            Bytes::from_static(b"four!"),
            Sha256Digest::of(b"four")
        ));
        assert_eq!(receiver.borrow().rejected, 2);

        // A fixed re-announcement of version 3 (new digest) is wanted again.
        let three_fixed = announcement(3, b"THREE");
        assert!(core.wants(&three_fixed));
        assert!(core.offer(
            &three_fixed,
            Bytes::from_static(b"THREE"),
            Sha256Digest::of(b"THREE")
        ));
        assert_eq!(receiver.borrow().version(), Some(3));
        assert_eq!(receiver.borrow().loaded, 2);
    }
}
