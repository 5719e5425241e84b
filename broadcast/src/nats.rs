//! The NATS JetStream transport, for the distributed mode.
//!
//! # Layout on the server (per run id)
//!
//! | what | name | holds |
//! |---|---|---|
//! | object-store bucket | `{bucket_prefix}-{run_id}` (stream `OBJ_{bucket}`) | the safetensors bytes, object `adapter-{version:020}.safetensors`, chunked (`chunk_size`) |
//! | announcement stream | `ANNOUNCE_{bucket}` | the last `keep_last` announcements |
//! | announcement subject | `{subject_prefix}.{run_id}.announce` | one JSON [`Announcement`] per version |
//!
//! Everything carries the run id, so concurrent runs on one server never see each other.
//!
//! # Protocol
//!
//! The publisher uploads the bytes to the bucket (hashing them on the way), and only then
//! announces; so an announced object is always complete. Afterwards it deletes all but
//! the `keep_last` most recently published objects.
//!
//! A subscriber listens on the subject (core NATS, for speed) and, because core
//! subscriptions miss what is published while disconnected, also asks the announcement
//! stream for its last message at start (late joiners), after every reconnect, and every
//! `resync_interval_s`. It only ever fetches the newest announcement newer than what it
//! holds, reads the object, and verifies size and SHA-256 itself before swapping it in. A
//! fetch that fails (server gone, object pruned, deadline) is retried after 250 ms,
//! doubling up to the resync interval; a newer announcement is fetched at once.
//!
//! # The object-store layout, written and read directly
//!
//! Objects follow the JetStream object-store layout (stream `OBJ_{bucket}`, chunks on
//! `$O.{bucket}.C.{nuid}`, the JSON `ObjectInfo` with a `SHA-256=` digest on
//! `$O.{bucket}.M.{base64url(name)}`), so `nats object ls/get` and
//! `async_nats::jetstream::object_store` read them. Bucket creation, listing and deletion
//! go through the object-store API. The bytes themselves are written and read with plain
//! JetStream publishes and an ordered consumer, because `ObjectStore::put` waits for
//! each chunk's ack before sending the next and both `put` and `get` hash every byte in
//! addition to the hash the announcement needs; at 148 MB that cost ~0.2 s on the upload
//! and ~0.2 s per subscriber (`tgrpo bench broadcast`).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, object_store, stream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{BroadcastConfig, is_name_token};
use crate::error::{BroadcastError, with_deadline};
use crate::subscriber::{AdapterSubscriber, SubscriberCore, error_chain};
use crate::types::{Announcement, PublishReceipt, Rejection, Sha256Digest, unix_millis_now};

/// Chunks of one upload awaiting their JetStream ack at once. 64 × 512 KiB = 32 MiB in
/// flight keeps loopback and LAN links busy without flooding the server.
const CHUNKS_IN_FLIGHT: usize = 64;

/// First delay before refetching a version whose fetch failed; doubles per failure up to
/// the resync interval.
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Longest accepted run id: bucket, stream and consumer names must stay well below the
/// server's 255-character limits after prefixes are added.
const MAX_RUN_ID_LEN: usize = 64;

/// Checks that `run_id` can be used in bucket, stream and subject names.
pub(crate) fn validate_run_id(run_id: &str) -> Result<(), BroadcastError> {
    let reason = if run_id.is_empty() {
        Some("must not be empty")
    } else if run_id.len() > MAX_RUN_ID_LEN {
        Some("must be at most 64 characters")
    } else if !is_name_token(run_id) {
        Some("must use only A-Z a-z 0-9 _ -")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BroadcastError::InvalidRunId {
            run_id: run_id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The server-side names of one run's broadcast (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsNames {
    /// The object-store bucket.
    pub bucket: String,
    /// The JetStream stream that keeps the announcements.
    pub announce_stream: String,
    /// The subject announcements are published on.
    pub subject: String,
}

impl NatsNames {
    /// The names for `run_id` under `config`'s prefixes.
    pub fn new(config: &BroadcastConfig, run_id: &str) -> Result<Self, BroadcastError> {
        validate_run_id(run_id)?;
        let bucket = format!("{}-{run_id}", config.bucket_prefix);
        Ok(Self {
            announce_stream: format!("ANNOUNCE_{bucket}"),
            subject: format!("{}.{run_id}.announce", config.subject_prefix),
            bucket,
        })
    }

    /// The object name of adapter `version`; zero-padded so names sort by version.
    pub fn object_name(version: u64) -> String {
        format!("adapter-{version:020}.safetensors")
    }

    /// The version encoded in an object name from [`Self::object_name`].
    pub fn parse_object_name(name: &str) -> Option<u64> {
        let digits = name
            .strip_prefix("adapter-")?
            .strip_suffix(".safetensors")?;
        if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// The NATS broadcast of one run: a connection plus the run's names. Cheap to clone
/// (clones share the connection, as async-nats intends).
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), tgrpo_broadcast::BroadcastError> {
/// use tgrpo_broadcast::{BroadcastConfig, NatsBroadcast};
/// let config = BroadcastConfig { url: "nats://127.0.0.1:4222".into(), ..Default::default() };
/// let broadcast = NatsBroadcast::connect("run-7", &config).await?;
/// // Learner:
/// let publisher = broadcast.publisher().await?;
/// publisher.publish(1, std::fs::read("adapter_model.safetensors").unwrap()).await?;
/// // Rollout worker:
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let mut subscriber = broadcast.subscribe(&shutdown);
/// let generation = subscriber.changed().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NatsBroadcast {
    client: async_nats::Client,
    /// Boxed in an `Arc`: the context is large and this handle is cloned into every task.
    jetstream: Arc<jetstream::Context>,
    config: Arc<BroadcastConfig>,
    names: Arc<NatsNames>,
    run_id: Arc<str>,
    /// Counts (re)connections when this crate made the connection; subscribers look up
    /// the latest announcement after each one.
    reconnects: Arc<watch::Sender<u64>>,
}

impl NatsBroadcast {
    /// Connects to `config.url` (within `connect_timeout_s`); the client reconnects by
    /// itself afterwards, and subscribers catch up after each reconnect.
    pub async fn connect(run_id: &str, config: &BroadcastConfig) -> Result<Self, BroadcastError> {
        config.validate()?;
        NatsNames::new(config, run_id)?;
        let reconnects = Arc::new(watch::Sender::new(0_u64));
        let events = Arc::clone(&reconnects);
        let url = config.url.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("tgrpo-broadcast-{run_id}"))
            .connection_timeout(config.connect_timeout())
            .request_timeout(Some(config.request_timeout()))
            .event_callback(move |event| {
                let events = Arc::clone(&events);
                let url = url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(%url, "connected to nats");
                            events.send_modify(|count| *count += 1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%url, "disconnected from nats; reconnecting");
                        }
                        other => tracing::debug!(%url, event = %other, "nats event"),
                    }
                }
            });
        let client = match tokio::time::timeout(
            config.connect_timeout(),
            options.connect(config.url.as_str()),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => {
                return Err(BroadcastError::Connect {
                    url: config.url.clone(),
                    source: source.into(),
                });
            }
            Err(_elapsed) => {
                return Err(BroadcastError::Timeout {
                    operation: "connect",
                    target: config.url.clone(),
                    after: config.connect_timeout(),
                });
            }
        };
        Self::build(client, run_id, config, reconnects)
    }

    /// Uses an existing connection (connect once per process, clone the handle). Without
    /// the connection's events, subscribers notice a reconnect only at their next resync.
    pub fn from_client(
        client: async_nats::Client,
        run_id: &str,
        config: &BroadcastConfig,
    ) -> Result<Self, BroadcastError> {
        config.validate()?;
        Self::build(client, run_id, config, Arc::new(watch::Sender::new(0)))
    }

    fn build(
        client: async_nats::Client,
        run_id: &str,
        config: &BroadcastConfig,
        reconnects: Arc<watch::Sender<u64>>,
    ) -> Result<Self, BroadcastError> {
        let names = NatsNames::new(config, run_id)?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(config.request_timeout());
        Ok(Self {
            client,
            jetstream: Arc::new(jetstream),
            config: Arc::new(config.clone()),
            names: Arc::new(names),
            run_id: run_id.into(),
            reconnects,
        })
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The bucket, stream and subject this run uses.
    pub fn names(&self) -> &NatsNames {
        &self.names
    }

    /// The underlying connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The config in force.
    pub fn config(&self) -> &BroadcastConfig {
        &self.config
    }

    /// Creates the run's bucket and announcement stream if needed and returns the
    /// learner's publisher. Fails if `chunk_size` exceeds the server's `max_payload`.
    pub async fn publisher(&self) -> Result<crate::AdapterPublisher, BroadcastError> {
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && self.config.chunk_size > max_payload {
            return Err(BroadcastError::InvalidConfig {
                field: "chunk_size",
                reason: format!(
                    "is {}, above the max_payload of {} ({max_payload} bytes)",
                    self.config.chunk_size, self.config.url
                ),
            });
        }
        let store = self.ensure_bucket().await?;
        self.ensure_announce_stream().await?;
        Ok(crate::AdapterPublisher::from_nats(NatsPublisher {
            broadcast: self.clone(),
            store: Arc::new(store),
            serial: Arc::new(tokio::sync::Mutex::new(())),
        }))
    }

    async fn ensure_bucket(&self) -> Result<object_store::ObjectStore, BroadcastError> {
        let timeout = self.config.request_timeout();
        let bucket = &self.names.bucket;
        if let Ok(store) = with_deadline(
            "get bucket",
            bucket,
            timeout,
            self.jetstream.get_object_store(bucket),
        )
        .await
        {
            return Ok(store);
        }
        with_deadline(
            "create bucket",
            bucket,
            timeout,
            self.jetstream.create_object_store(object_store::Config {
                bucket: bucket.clone(),
                description: Some(format!("tgrpo LoRA adapters of run {}", self.run_id)),
                storage: self.config.storage.into(),
                ..Default::default()
            }),
        )
        .await
    }

    async fn ensure_announce_stream(&self) -> Result<(), BroadcastError> {
        let keep = i64::try_from(self.config.keep_last).unwrap_or(i64::MAX);
        with_deadline(
            "create announcement stream",
            &self.names.announce_stream,
            self.config.request_timeout(),
            self.jetstream.get_or_create_stream(stream::Config {
                name: self.names.announce_stream.clone(),
                description: Some(format!(
                    "tgrpo adapter announcements of run {}",
                    self.run_id
                )),
                subjects: vec![self.names.subject.clone()],
                max_messages_per_subject: keep,
                storage: self.config.storage.into(),
                discard: stream::DiscardPolicy::Old,
                allow_direct: true,
                ..Default::default()
            }),
        )
        .await
        .map(drop)
    }

    /// The newest announcement kept by the server, `None` if nothing was published yet
    /// (or the run's stream does not exist).
    pub async fn latest_announcement(&self) -> Result<Option<Announcement>, BroadcastError> {
        let stream_name = &self.names.announce_stream;
        let stream = with_deadline(
            "open announcement stream",
            stream_name,
            self.config.request_timeout(),
            self.jetstream.get_stream_no_info(stream_name),
        )
        .await?;
        let lookup = tokio::time::timeout(
            self.config.request_timeout(),
            stream.get_last_raw_message_by_subject(&self.names.subject),
        )
        .await;
        let message = match lookup {
            Err(_elapsed) => {
                return Err(BroadcastError::Timeout {
                    operation: "look up latest announcement",
                    target: stream_name.clone(),
                    after: self.config.request_timeout(),
                });
            }
            Ok(Ok(message)) => message,
            Ok(Err(error)) => {
                use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
                return match error.kind() {
                    Kind::NoMessageFound => Ok(None),
                    Kind::JetStream(inner)
                        if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    _ => Err(BroadcastError::nats(
                        "look up latest announcement",
                        stream_name,
                        error,
                    )),
                };
            }
        };
        decode_announcement(&self.names.subject, &message.payload).map(Some)
    }

    /// Starts a subscriber (a rollout worker's end). It stops when `shutdown` is
    /// cancelled, on [`AdapterSubscriber::close`], or when all its clones are dropped.
    pub fn subscribe(&self, shutdown: &CancellationToken) -> AdapterSubscriber {
        let (core, state) = SubscriberCore::new(Arc::clone(&self.run_id), "nats");
        let cancel = shutdown.child_token();
        let task = run_subscriber(self.clone(), core, cancel.clone());
        AdapterSubscriber::spawn(Arc::clone(&self.run_id), state, cancel, task)
    }

    /// Deletes the run's bucket and announcement stream (end of a run, tests). Missing
    /// ones are not an error.
    pub async fn delete_run(&self) -> Result<(), BroadcastError> {
        let timeout = self.config.request_timeout();
        let bucket = &self.names.bucket;
        if let Err(error) = with_deadline(
            "delete bucket",
            bucket,
            timeout,
            self.jetstream.delete_object_store(bucket),
        )
        .await
        {
            tracing::debug!(error = %error_chain(&error), "bucket not deleted");
        }
        let stream_name = &self.names.announce_stream;
        if let Err(error) = with_deadline(
            "delete announcement stream",
            stream_name,
            timeout,
            self.jetstream.delete_stream(stream_name),
        )
        .await
        {
            tracing::debug!(error = %error_chain(&error), "announcement stream not deleted");
        }
        Ok(())
    }
}

/// A fresh object id: 22 random alphanumerics, like the NUIDs object-store clients use
/// (only uniqueness within the bucket matters).
fn new_nuid() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

fn decode_announcement(subject: &str, payload: &[u8]) -> Result<Announcement, BroadcastError> {
    serde_json::from_slice(payload).map_err(|source| BroadcastError::BadAnnouncement {
        subject: subject.to_string(),
        source: source.into(),
    })
}

/// The learner's end on NATS. Publishes are serialized (one upload at a time) so that
/// announcements and pruning happen in version order.
#[derive(Clone)]
pub(crate) struct NatsPublisher {
    broadcast: NatsBroadcast,
    /// In an `Arc` because the handle carries the bucket stream's full info (large).
    store: Arc<object_store::ObjectStore>,
    serial: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("names", &self.broadcast.names)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    pub(crate) fn run_id(&self) -> &str {
        &self.broadcast.run_id
    }

    /// The version of the newest announcement the server keeps for the run.
    pub(crate) async fn latest_version(&self) -> Result<Option<u64>, BroadcastError> {
        Ok(self
            .broadcast
            .latest_announcement()
            .await?
            .map(|announcement| announcement.version))
    }

    /// Uploads, announces, prunes. `announced_sha256` replaces the true digest in the
    /// announcement (only for tests of the rejection path).
    pub(crate) async fn publish(
        &self,
        version: u64,
        bytes: Bytes,
        announced_sha256: Option<Sha256Digest>,
    ) -> Result<PublishReceipt, BroadcastError> {
        let started = Instant::now();
        let config = &self.broadcast.config;
        let size = bytes.len() as u64;
        if size > config.max_adapter_bytes {
            return Err(BroadcastError::TooLarge {
                version,
                size,
                max: config.max_adapter_bytes,
            });
        }
        let _serial = self.serial.lock().await;
        let object_name = NatsNames::object_name(version);

        let (info, digest) = self.put_object(&object_name, &bytes).await?;
        let announcement = Announcement {
            run_id: self.broadcast.run_id.to_string(),
            version,
            size,
            sha256: announced_sha256.unwrap_or(digest),
            object: object_name,
            published_at_ms: unix_millis_now(),
        };
        self.announce(&announcement).await?;
        let pruned = self.prune().await;
        let elapsed = started.elapsed();
        tracing::info!(
            run_id = %self.broadcast.run_id,
            version,
            size,
            sha256 = %announcement.sha256,
            chunks = info.chunks,
            pruned = ?pruned,
            elapsed_ms = elapsed.as_millis() as u64,
            "adapter published"
        );
        Ok(PublishReceipt {
            announcement,
            chunks: info.chunks,
            pruned,
            elapsed,
        })
    }

    /// Writes `bytes` as object `name` of the run's bucket and returns its info and
    /// SHA-256.
    ///
    /// This writes the object-store layout itself (chunks on `$O.{bucket}.C.{nuid}`, then
    /// the JSON `ObjectInfo` on `$O.{bucket}.M.{base64url(name)}` with a subject rollup,
    /// then a purge of the chunks of any object it replaces), so any object-store client
    /// (`nats object get`, `ObjectStore::get`) reads it. It differs from
    /// `ObjectStore::put` in two ways the benchmark showed to matter at 148 MB:
    /// up to [`CHUNKS_IN_FLIGHT`] chunks await their acks at once instead of one (an
    /// upload is no longer a chain of round trips), and the bytes are hashed once, inline,
    /// instead of once by the store and once more for the announcement.
    pub(crate) async fn put_object(
        &self,
        name: &str,
        bytes: &Bytes,
    ) -> Result<(object_store::ObjectInfo, Sha256Digest), BroadcastError> {
        let bucket = &self.broadcast.names.bucket;
        let target = format!("{bucket}/{name}");
        let config = &self.broadcast.config;
        let jetstream = &self.broadcast.jetstream;
        let upload = async {
            // An object already under this name (the same version published again) has
            // its chunks purged once the new metadata is in place.
            let replaced = match self.store.info(name).await {
                Ok(info) if !info.deleted => Some(info),
                _ => None,
            };
            let nuid = new_nuid();
            let chunk_subject = format!("$O.{bucket}.C.{nuid}");
            let mut hasher = Sha256::new();
            let mut acks = std::collections::VecDeque::with_capacity(CHUNKS_IN_FLIGHT);
            let mut chunks = 0;
            for piece in bytes.chunks(config.chunk_size) {
                // ≤ 1 MiB per chunk, ~0.5 ms: fine inline, and it overlaps the upload.
                hasher.update(piece);
                let ack = jetstream
                    .publish(chunk_subject.clone(), bytes.slice_ref(piece))
                    .await
                    .map_err(|error| BroadcastError::nats("publish chunk", &target, error))?;
                acks.push_back(ack.into_future());
                chunks += 1;
                if acks.len() >= CHUNKS_IN_FLIGHT
                    && let Some(oldest) = acks.pop_front()
                {
                    oldest
                        .await
                        .map_err(|error| BroadcastError::nats("chunk ack", &target, error))?;
                }
            }
            for ack in acks {
                ack.await
                    .map_err(|error| BroadcastError::nats("chunk ack", &target, error))?;
            }
            let digest = Sha256Digest(hasher.finalize().into());

            let info = object_store::ObjectInfo {
                name: name.to_string(),
                description: None,
                metadata: Default::default(),
                headers: None,
                options: Some(object_store::ObjectOptions {
                    link: None,
                    max_chunk_size: Some(config.chunk_size),
                }),
                bucket: bucket.clone(),
                nuid,
                size: bytes.len(),
                chunks,
                modified: None,
                digest: Some(format!("SHA-256={}", URL_SAFE.encode(digest.0))),
                deleted: false,
            };
            let metadata = serde_json::to_vec(&info)
                .map_err(|error| BroadcastError::nats("encode object info", &target, error))?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_ROLLUP, "sub");
            let meta_subject = format!("$O.{bucket}.M.{}", URL_SAFE.encode(name));
            jetstream
                .publish_with_headers(meta_subject, headers, metadata.into())
                .await
                .map_err(|error| BroadcastError::nats("publish object info", &target, error))?
                .await
                .map_err(|error| BroadcastError::nats("object info ack", &target, error))?;

            if let Some(replaced) = replaced {
                let old_chunks = format!("$O.{bucket}.C.{}", replaced.nuid);
                let stream = jetstream
                    .get_stream_no_info(format!("OBJ_{bucket}"))
                    .await
                    .map_err(|error| BroadcastError::nats("open bucket stream", &target, error))?;
                stream.purge().filter(old_chunks).await.map_err(|error| {
                    BroadcastError::nats("purge replaced chunks", &target, error)
                })?;
            }
            Ok((info, digest))
        };
        match tokio::time::timeout(config.transfer_timeout(), upload).await {
            Ok(result) => result,
            Err(_elapsed) => Err(BroadcastError::Timeout {
                operation: "put object",
                target,
                after: config.transfer_timeout(),
            }),
        }
    }

    /// Publishes `announcement` to the run's subject and waits for JetStream's ack.
    pub(crate) async fn announce(&self, announcement: &Announcement) -> Result<(), BroadcastError> {
        let subject = &self.broadcast.names.subject;
        let payload = serde_json::to_vec(announcement)
            .map_err(|source| BroadcastError::nats("encode announcement", subject, source))?;
        let timeout = self.broadcast.config.request_timeout();
        let jetstream = &self.broadcast.jetstream;
        let ack = with_deadline(
            "announce",
            subject,
            timeout,
            jetstream.publish(subject.clone(), payload.into()),
        )
        .await?;
        with_deadline("announce ack", subject, timeout, ack.into_future())
            .await
            .map(drop)
    }

    /// Deletes every adapter object except the `keep_last` most recently published.
    /// Failures are logged, not returned: the new version is already announced.
    async fn prune(&self) -> Vec<u64> {
        match self.prune_inner().await {
            Ok(pruned) => pruned,
            Err(error) => {
                tracing::warn!(
                    bucket = %self.broadcast.names.bucket,
                    error = %error_chain(&error),
                    "pruning old adapters failed; will retry after the next publish"
                );
                Vec::new()
            }
        }
    }

    async fn prune_inner(&self) -> Result<Vec<u64>, BroadcastError> {
        let bucket = &self.broadcast.names.bucket;
        let timeout = self.broadcast.config.request_timeout();
        // The listing comes in stream order of each object's latest metadata, i.e. in
        // publication order; keeping the tail (not the highest versions) stays right when
        // a restarted learner republishes lower version numbers.
        let listing = with_deadline("list bucket", bucket, timeout, async {
            self.store
                .list()
                .await?
                .try_collect::<Vec<_>>()
                .await
                .map_err(|error| -> crate::error::BoxError { error.into() })
        })
        .await?;
        let adapters: Vec<(String, u64)> = listing
            .into_iter()
            .filter_map(|info| {
                let version = NatsNames::parse_object_name(&info.name)?;
                Some((info.name, version))
            })
            .collect();
        let keep = self.broadcast.config.keep_last;
        let excess = adapters.len().saturating_sub(keep);
        let mut pruned = Vec::with_capacity(excess);
        for (name, version) in adapters.into_iter().take(excess) {
            with_deadline(
                "delete object",
                format!("{bucket}/{name}"),
                timeout,
                self.store.delete(&name),
            )
            .await?;
            pruned.push(version);
        }
        Ok(pruned)
    }
}

/// What fetching an announced object produced.
enum Fetched {
    /// The whole object, with the digest of what was read.
    Complete { bytes: Bytes, sha256: Sha256Digest },
    /// The object is not what was announced (or the store saw its chunks damaged).
    Corrupt(Rejection),
}

async fn run_subscriber(broadcast: NatsBroadcast, core: SubscriberCore, cancel: CancellationToken) {
    let config = Arc::clone(&broadcast.config);
    let subject = broadcast.names.subject.clone();
    let mut reconnects = broadcast.reconnects.subscribe();
    let mut resync = tokio::time::interval(config.resync_interval());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live: Option<async_nats::Subscriber> = None;
    let mut store: Option<object_store::ObjectStore> = None;
    // The newest announcement heard of and not yet handled.
    let mut newest: Option<Announcement> = None;
    // After a failed fetch: the version that failed and when to try it again. Newer
    // versions do not wait for it.
    let mut retry: Option<(u64, tokio::time::Instant)> = None;
    let mut backoff = FIRST_RETRY;

    loop {
        if live.is_none() {
            match with_deadline(
                "subscribe",
                &subject,
                config.request_timeout(),
                broadcast.client.subscribe(subject.clone()),
            )
            .await
            {
                Ok(subscription) => live = Some(subscription),
                Err(error) => tracing::warn!(
                    %subject,
                    error = %error_chain(&error),
                    "cannot subscribe to announcements; relying on resync"
                ),
            }
        }

        let mut look_up_latest = false;
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = core.closed() => break,
            _ = reconnects.changed() => look_up_latest = true,
            _ = resync.tick() => look_up_latest = true,
            () = sleep_until_retry(retry) => {
                retry = None;
                look_up_latest = true;
            }
            message = next_live(&mut live) => match message {
                Some(message) => consider(&core, &mut newest, &subject, &message.payload),
                None => live = None,
            },
        }
        // Skip intermediate versions: take every announcement already buffered.
        while let Some(Some(message)) = live.as_mut().and_then(|live| live.next().now_or_never()) {
            consider(&core, &mut newest, &subject, &message.payload);
        }
        if look_up_latest {
            match broadcast.latest_announcement().await {
                Ok(Some(announcement)) => offer_newest(&core, &mut newest, announcement),
                Ok(None) => {}
                Err(error) => tracing::debug!(
                    %subject,
                    error = %error_chain(&error),
                    "latest announcement lookup failed; retrying at next resync"
                ),
            }
        }

        let Some(announcement) = newest.take() else {
            continue;
        };
        if !core.wants(&announcement) {
            continue;
        }
        if retry.is_some_and(|(failed_version, _)| announcement.version <= failed_version) {
            newest = Some(announcement);
            continue;
        }
        let fetched = tokio::select! {
            () = cancel.cancelled() => break,
            fetched = fetch(&broadcast, &mut store, &announcement) => fetched,
        };
        match fetched {
            Ok(Fetched::Complete { bytes, sha256 }) => {
                core.offer(&announcement, bytes, sha256);
                retry = None;
                backoff = FIRST_RETRY;
            }
            Ok(Fetched::Corrupt(rejection)) => {
                core.reject(rejection);
                retry = None;
            }
            Err(error) => {
                // The bucket handle may be stale after a server restart.
                store = None;
                core.note_fetch_failure(announcement.version, &error);
                retry = Some((announcement.version, tokio::time::Instant::now() + backoff));
                backoff = (backoff * 2).min(config.resync_interval());
                offer_newest(&core, &mut newest, announcement);
            }
        }
    }
    tracing::debug!(run_id = core.run_id(), "nats adapter subscriber stopped");
}

/// Sleeps until the retry time, or forever when no retry is due.
async fn sleep_until_retry(retry: Option<(u64, tokio::time::Instant)>) {
    match retry {
        Some((_, at)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_live(live: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match live {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

/// Decodes a live announcement and keeps it if it is the newest for this run.
fn consider(
    core: &SubscriberCore,
    newest: &mut Option<Announcement>,
    subject: &str,
    payload: &[u8],
) {
    match decode_announcement(subject, payload) {
        Ok(announcement) => offer_newest(core, newest, announcement),
        Err(error) => {
            tracing::warn!(%subject, error = %error_chain(&error), "ignoring announcement")
        }
    }
}

fn offer_newest(core: &SubscriberCore, newest: &mut Option<Announcement>, candidate: Announcement) {
    if candidate.run_id != core.run_id() {
        tracing::warn!(
            expected = core.run_id(),
            got = %candidate.run_id,
            version = candidate.version,
            "ignoring announcement of another run"
        );
        return;
    }
    core.note_announced(candidate.version);
    if newest
        .as_ref()
        .is_none_or(|current| candidate.version > current.version)
    {
        *newest = Some(candidate);
    }
}

/// Reads the announced object and hashes it on the way in.
async fn fetch(
    broadcast: &NatsBroadcast,
    store: &mut Option<object_store::ObjectStore>,
    announcement: &Announcement,
) -> Result<Fetched, BroadcastError> {
    let config = &broadcast.config;
    let bucket = &broadcast.names.bucket;
    if announcement.size > config.max_adapter_bytes {
        return Err(BroadcastError::TooLarge {
            version: announcement.version,
            size: announcement.size,
            max: config.max_adapter_bytes,
        });
    }
    let object_name = if announcement.object.is_empty() {
        NatsNames::object_name(announcement.version)
    } else {
        announcement.object.clone()
    };
    let target = format!("{bucket}/{object_name}");
    let bucket_store = match store {
        Some(existing) => existing.clone(),
        None => {
            let opened = with_deadline(
                "open bucket",
                bucket,
                config.request_timeout(),
                broadcast.jetstream.get_object_store(bucket),
            )
            .await?;
            *store = Some(opened.clone());
            opened
        }
    };
    let info = with_deadline(
        "get object info",
        &target,
        config.request_timeout(),
        bucket_store.info(&object_name),
    )
    .await?;
    if info.deleted {
        // Pruned since it was announced (this worker fell `keep_last` versions behind):
        // the next lookup finds a newer one.
        return Err(BroadcastError::nats(
            "get object",
            target,
            "object was deleted",
        ));
    }
    let corrupt = |actual_size: u64, actual_sha256: Option<Sha256Digest>, reason: String| {
        Fetched::Corrupt(Rejection {
            version: announcement.version,
            expected_size: announcement.size,
            actual_size,
            expected_sha256: announcement.sha256,
            actual_sha256,
            reason,
        })
    };
    let stored_size = info.size as u64;
    if info
        .options
        .as_ref()
        .is_some_and(|options| options.link.is_some())
    {
        return Ok(corrupt(
            stored_size,
            None,
            "object is a link, not an adapter".into(),
        ));
    }
    if stored_size > config.max_adapter_bytes {
        return Ok(corrupt(
            stored_size,
            None,
            format!(
                "stored object is larger than max_adapter_bytes ({})",
                config.max_adapter_bytes
            ),
        ));
    }

    // The chunks are read straight from the bucket's stream (the object-store layout:
    // stream `OBJ_{bucket}`, subject `$O.{bucket}.C.{nuid}`) rather than through
    // `ObjectStore::get`, whose reader hashes every byte a second time: at 148 MB that
    // doubled the hashing per worker and cost ~0.2 s per fetch on the benchmark.
    let read = async {
        let mut buffer = Vec::with_capacity(info.size);
        let mut hasher = Sha256::new();
        if info.chunks > 0 {
            let stream = with_deadline(
                "open bucket stream",
                bucket,
                config.request_timeout(),
                broadcast
                    .jetstream
                    .get_stream_no_info(format!("OBJ_{bucket}")),
            )
            .await?;
            let consumer = with_deadline(
                "create chunk consumer",
                &target,
                config.request_timeout(),
                stream.create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: broadcast.client.new_inbox(),
                    filter_subject: format!("$O.{bucket}.C.{}", info.nuid),
                    description: Some(format!("tgrpo adapter fetch {object_name}")),
                    ..Default::default()
                }),
            )
            .await?;
            let mut chunks = with_deadline(
                "subscribe to chunks",
                &target,
                config.request_timeout(),
                consumer.messages(),
            )
            .await?;
            for _chunk in 0..info.chunks {
                // A chunk that does not come within a request deadline means the object
                // went away (pruned) or the server did; the overall transfer deadline
                // bounds the rest.
                let chunk =
                    match tokio::time::timeout(config.request_timeout(), chunks.next()).await {
                        Err(_elapsed) => {
                            return Err(BroadcastError::Timeout {
                                operation: "read chunk",
                                target: target.clone(),
                                after: config.request_timeout(),
                            });
                        }
                        Ok(None) => {
                            return Err(BroadcastError::nats(
                                "read chunk",
                                target.clone(),
                                "chunk subscription ended",
                            ));
                        }
                        Ok(Some(Err(error))) => {
                            return Err(BroadcastError::nats("read chunk", target.clone(), error));
                        }
                        Ok(Some(Ok(chunk))) => chunk,
                    };
                if buffer.len() + chunk.payload.len() > info.size {
                    return Ok(corrupt(
                        (buffer.len() + chunk.payload.len()) as u64,
                        None,
                        format!(
                            "chunks hold more than the {} bytes the bucket lists",
                            info.size
                        ),
                    ));
                }
                // Hashing a chunk inline (≤ 1 MiB, ~0.5 ms) overlaps it with the transfer.
                hasher.update(&chunk.payload);
                buffer.extend_from_slice(&chunk.payload);
            }
        }
        let sha256 = Sha256Digest(hasher.finalize().into());
        Ok(Fetched::Complete {
            bytes: Bytes::from(buffer),
            sha256,
        })
    };
    match tokio::time::timeout(config.transfer_timeout(), read).await {
        Ok(result) => result,
        Err(_elapsed) => Err(BroadcastError::Timeout {
            operation: "read object",
            target,
            after: config.transfer_timeout(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_run_id_and_object_names_round_trip() {
        let config = BroadcastConfig::default();
        let names = NatsNames::new(&config, "run_1").unwrap();
        assert_eq!(names.bucket, "tgrpo-adapters-run_1");
        assert_eq!(names.announce_stream, "ANNOUNCE_tgrpo-adapters-run_1");
        assert_eq!(names.subject, "tgrpo.adapters.run_1.announce");
        let other = NatsNames::new(&config, "run_2").unwrap();
        assert_ne!(names.bucket, other.bucket);
        assert_ne!(names.subject, other.subject);

        for version in [0, 7, u64::MAX] {
            let name = NatsNames::object_name(version);
            assert_eq!(NatsNames::parse_object_name(&name), Some(version));
        }
        assert_eq!(NatsNames::parse_object_name("adapter-7.safetensors"), None);
        assert_eq!(NatsNames::parse_object_name("other"), None);
    }

    #[test]
    fn bad_run_ids_are_rejected_with_the_id() {
        for run_id in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            let error = NatsNames::new(&BroadcastConfig::default(), run_id).unwrap_err();
            assert!(
                matches!(error, BroadcastError::InvalidRunId { .. }),
                "{run_id}"
            );
            assert!(error.to_string().contains(run_id));
        }
    }
}
