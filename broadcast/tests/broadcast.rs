//! Behaviour tests of the adapter broadcast, written once and run for both transports:
//! in-process, and NATS JetStream against a real nats-server started per test on a free
//! port (never the shared one on 4222). NATS-only behaviour (pruning, overwritten
//! objects, server restarts) follows at the end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::TryStreamExt;
use rand::{RngCore, SeedableRng};
use tgrpo_broadcast::testing::NatsServer;
use tgrpo_broadcast::{
    AdapterPublisher, AdapterSubscriber, Broadcast, BroadcastConfig, BroadcastError,
    LocalBroadcast, NatsBroadcast, NatsNames, Sha256Digest, StorageKind, SubscriberState,
};
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait in these tests, so a bug fails instead of hanging CI.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Transport {
    Local,
    Nats,
}

/// One transport's world: a server (NATS) or a registry of channels (local), plus the
/// shutdown token every subscriber hangs off.
struct Harness {
    transport: Transport,
    server: Option<NatsServer>,
    config: BroadcastConfig,
    locals: Mutex<HashMap<String, LocalBroadcast>>,
    shutdown: CancellationToken,
}

impl Harness {
    async fn new(transport: Transport) -> Result<Self> {
        Self::with_config(transport, |_| {}).await
    }

    async fn with_config(
        transport: Transport,
        adjust: impl FnOnce(&mut BroadcastConfig),
    ) -> Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "tgrpo_broadcast=debug".into()),
            )
            .with_test_writer()
            .try_init();
        let server = match transport {
            Transport::Local => None,
            Transport::Nats => Some(NatsServer::start().await.context("starting nats-server")?),
        };
        let mut config = BroadcastConfig {
            url: server.as_ref().map_or_else(String::new, NatsServer::url),
            // Several chunks even for the few-MB adapters of these tests.
            chunk_size: 256 << 10,
            resync_interval_s: 1.0,
            request_timeout_s: 5.0,
            connect_timeout_s: 5.0,
            ..Default::default()
        };
        if server.is_none() {
            config.url = "unused://in-process".into();
        }
        adjust(&mut config);
        Ok(Self {
            transport,
            server,
            config,
            locals: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    /// A broadcast handle for `run_id`; on NATS a new connection each time, as a separate
    /// process would have.
    async fn broadcast(&self, run_id: &str) -> Result<Broadcast> {
        Ok(match self.transport {
            Transport::Local => {
                let mut locals = self.locals.lock().unwrap();
                let local = match locals.get(run_id) {
                    Some(local) => local.clone(),
                    None => {
                        let local = LocalBroadcast::new(run_id, &self.config)?;
                        locals.insert(run_id.to_string(), local.clone());
                        local
                    }
                };
                Broadcast::Local(local)
            }
            Transport::Nats => Broadcast::connect_nats(run_id, &self.config).await?,
        })
    }

    async fn publisher(&self, run_id: &str) -> Result<AdapterPublisher> {
        Ok(self.broadcast(run_id).await?.publisher().await?)
    }

    async fn subscriber(&self, run_id: &str) -> Result<AdapterSubscriber> {
        Ok(self.broadcast(run_id).await?.subscribe(&self.shutdown))
    }

    /// Cancels every subscriber and checks that each one stopped.
    async fn finish(self, subscribers: &[&AdapterSubscriber]) -> Result<()> {
        self.shutdown.cancel();
        for subscriber in subscribers {
            tokio::time::timeout(WAIT, subscriber.close())
                .await
                .context("subscriber did not stop after shutdown")?;
            ensure!(subscriber.is_closed(), "subscriber task still running");
        }
        drop(self.server);
        Ok(())
    }
}

fn random_adapter(size: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0_u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, future)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// Waits until the subscriber's state satisfies `accept`.
async fn wait_state(
    subscriber: &AdapterSubscriber,
    what: &str,
    accept: impl Fn(&SubscriberState) -> bool,
) -> Result<SubscriberState> {
    let mut states = subscriber.watch_state();
    let state = bounded(what, states.wait_for(|state| accept(state))).await??;
    Ok(state.clone())
}

/// Records every version a subscriber swaps in, to check the order afterwards.
fn record_versions(subscriber: &AdapterSubscriber) -> tokio::task::JoinHandle<Vec<u64>> {
    let mut states = subscriber.watch_state();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let version = states.borrow_and_update().version();
            if let Some(version) = version
                && seen.last() != Some(&version)
            {
                seen.push(version);
            }
            if states.changed().await.is_err() {
                return seen;
            }
        }
    })
}

/// Generates one `#[tokio::test]` per transport for a behaviour test `fn(Transport)`.
macro_rules! for_both_transports {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Transport::Local).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Transport::Nats).await
                }
            )*
        }
    };
}

for_both_transports!(
    round_trip_of_a_multi_chunk_adapter_is_byte_exact,
    late_joiner_gets_the_latest_version_only,
    versions_only_move_forward,
    corrupted_adapter_is_rejected_and_the_old_one_kept,
    runs_do_not_see_each_other,
    oversized_adapter_is_refused,
    subscriber_stops_on_shutdown,
    a_new_publisher_sees_the_versions_announced_before_it,
);

/// A resumed learner asks where the run's numbering stands: a second publisher of the
/// same run (on NATS, a new connection, as a restarted process has) sees the last version
/// the first one announced; another run sees nothing.
async fn a_new_publisher_sees_the_versions_announced_before_it(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    let first = harness.publisher("run-resume").await?;
    assert_eq!(first.latest_announced_version().await?, None);
    for version in [1, 2, 5] {
        first
            .publish(version, random_adapter(1_000, version))
            .await?;
    }
    assert_eq!(first.latest_announced_version().await?, Some(5));
    drop(first);
    let second = harness.publisher("run-resume").await?;
    assert_eq!(second.latest_announced_version().await?, Some(5));
    let other = harness.publisher("run-other").await?;
    assert_eq!(other.latest_announced_version().await?, None);
    harness.finish(&[]).await
}

async fn round_trip_of_a_multi_chunk_adapter_is_byte_exact(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    // Subscribe before the publisher exists (a rollout worker that starts first).
    let mut subscriber = harness.subscriber("run-a").await?;
    assert!(subscriber.latest().is_none());
    let publisher = harness.publisher("run-a").await?;

    let adapter = random_adapter(5 * 1024 * 1024 + 123, 1);
    let receipt = publisher.publish(1, adapter.clone()).await?;
    assert_eq!(receipt.announcement.version, 1);
    assert_eq!(receipt.announcement.size, adapter.len() as u64);
    assert_eq!(receipt.announcement.sha256, Sha256Digest::of(&adapter));
    if let Transport::Nats = transport {
        // 5 MiB + 123 bytes in 256 KiB chunks.
        assert_eq!(receipt.chunks, 21);
    }

    let generation = bounded("version 1", subscriber.changed()).await??;
    assert_eq!(generation.version, 1);
    assert_eq!(generation.sha256, Sha256Digest::of(&adapter));
    assert!(generation.bytes[..] == adapter[..], "bytes differ");
    assert_eq!(subscriber.latest().unwrap().version, 1);

    // A second version replaces the first as a whole.
    let adapter_2 = random_adapter(3 * 1024 * 1024, 2);
    publisher.publish(2, adapter_2.clone()).await?;
    let generation_2 = bounded("version 2", subscriber.changed()).await??;
    assert_eq!(generation_2.version, 2);
    assert!(
        generation_2.bytes[..] == adapter_2[..],
        "bytes of v2 differ"
    );
    // The old generation stays intact for whoever still holds it.
    assert!(generation.bytes[..] == adapter[..]);
    let state = subscriber.state();
    assert_eq!((state.loaded, state.rejected), (2, 0));
    harness.finish(&[&subscriber]).await
}

async fn late_joiner_gets_the_latest_version_only(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    let publisher = harness.publisher("run-late").await?;
    for version in 1..=3 {
        publisher
            .publish(version, random_adapter(600_000, version))
            .await?;
    }
    let mut late = harness.subscriber("run-late").await?;
    let generation = bounded("latest version", late.changed()).await??;
    assert_eq!(generation.version, 3);
    assert!(generation.bytes[..] == random_adapter(600_000, 3)[..]);
    let state = late.state();
    assert_eq!(
        state.loaded, 1,
        "a late joiner loads only the newest version"
    );
    assert_eq!(state.latest_announced, Some(3));
    harness.finish(&[&late]).await
}

async fn versions_only_move_forward(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    let publisher = harness.publisher("run-fwd").await?;
    let mut subscriber = harness.subscriber("run-fwd").await?;
    let recorder = record_versions(&subscriber);

    publisher.publish(1, random_adapter(700_000, 1)).await?;
    bounded("version 1", subscriber.wait_for_version(1)).await??;
    // A burst: the subscriber may skip some of these, but must end on the newest.
    for version in 2..=6 {
        publisher
            .publish(version, random_adapter(700_000, version))
            .await?;
    }
    let generation = bounded("version 6", subscriber.wait_for_version(6)).await??;
    assert_eq!(generation.version, 6);
    assert!(generation.bytes[..] == random_adapter(700_000, 6)[..]);

    // An older version published afterwards (say, by a confused learner) is ignored (the
    // recorder below checks that nothing after v6 went lower)...
    publisher.publish(4, random_adapter(700_000, 40)).await?;
    wait_state(&subscriber, "announcement of v4 seen", |state| {
        state.latest_announced == Some(6)
    })
    .await?;
    // ...and the next newer one is still taken.
    publisher.publish(7, random_adapter(700_000, 7)).await?;
    bounded("version 7", subscriber.wait_for_version(7)).await??;
    assert_eq!(subscriber.latest().unwrap().version, 7);

    harness.shutdown.cancel();
    subscriber.close().await;
    drop(subscriber);
    let seen = bounded("recorder", recorder).await??;
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "versions went backwards: {seen:?}"
    );
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen.last(), Some(&7));
    Ok(())
}

async fn corrupted_adapter_is_rejected_and_the_old_one_kept(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    let publisher = harness.publisher("run-bad").await?;
    let mut subscriber = harness.subscriber("run-bad").await?;
    let good = random_adapter(1_500_000, 1);
    publisher.publish(1, good.clone()).await?;
    bounded("version 1", subscriber.wait_for_version(1)).await??;

    // Version 2 is announced with a digest that does not match its bytes.
    let bad = random_adapter(1_500_000, 2);
    let wrong_digest = Sha256Digest::of(b"not the adapter");
    publisher
        .publish_with_announced_digest(2, bad.clone(), wrong_digest)
        .await?;
    let state = wait_state(&subscriber, "rejection of v2", |state| state.rejected == 1).await?;
    assert_eq!(state.version(), Some(1), "the old adapter must be kept");
    assert!(state.generation.as_ref().unwrap().bytes[..] == good[..]);
    let rejection = state.last_rejection.context("rejection recorded")?;
    assert_eq!(rejection.version, 2);
    assert_eq!(rejection.expected_sha256, wrong_digest);
    assert_eq!(rejection.actual_sha256, Some(Sha256Digest::of(&bad)));
    assert_eq!(subscriber.latest().unwrap().version, 1);

    // Resyncs must not fetch the rejected version again and again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let state = subscriber.state();
    assert_eq!((state.rejected, state.version()), (1, Some(1)));

    // A good version 3 is loaded as usual.
    let next = random_adapter(1_500_000, 3);
    publisher.publish(3, next.clone()).await?;
    let generation = bounded("version 3", subscriber.wait_for_version(3)).await??;
    assert!(generation.bytes[..] == next[..]);
    assert_eq!(subscriber.state().rejected, 1);
    harness.finish(&[&subscriber]).await
}

async fn runs_do_not_see_each_other(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    let publisher_a = harness.publisher("run-a").await?;
    let publisher_b = harness.publisher("run-b").await?;
    let mut subscriber_a = harness.subscriber("run-a").await?;
    let mut subscriber_b = harness.subscriber("run-b").await?;

    publisher_a.publish(5, random_adapter(400_000, 50)).await?;
    publisher_b.publish(1, random_adapter(400_000, 10)).await?;
    let generation_a = bounded("run a", subscriber_a.changed()).await??;
    let generation_b = bounded("run b", subscriber_b.changed()).await??;
    assert_eq!(generation_a.version, 5);
    assert_eq!(generation_b.version, 1);
    assert!(generation_a.bytes[..] == random_adapter(400_000, 50)[..]);
    assert!(generation_b.bytes[..] == random_adapter(400_000, 10)[..]);

    // Run b's newer-numbered versions never reach run a.
    publisher_b.publish(9, random_adapter(400_000, 90)).await?;
    bounded("run b v9", subscriber_b.wait_for_version(9)).await??;
    let state_a = subscriber_a.state();
    assert_eq!(state_a.version(), Some(5));
    assert_eq!(state_a.latest_announced, Some(5));
    harness.finish(&[&subscriber_a, &subscriber_b]).await
}

async fn oversized_adapter_is_refused(transport: Transport) -> Result<()> {
    let harness = Harness::with_config(transport, |config| config.max_adapter_bytes = 1000).await?;
    let publisher = harness.publisher("run-big").await?;
    let error = publisher.publish(1, vec![0_u8; 1001]).await.unwrap_err();
    assert!(
        matches!(
            error,
            BroadcastError::TooLarge {
                version: 1,
                size: 1001,
                max: 1000
            }
        ),
        "{error}"
    );
    publisher.publish(1, vec![7_u8; 1000]).await?;
    Ok(())
}

async fn subscriber_stops_on_shutdown(transport: Transport) -> Result<()> {
    let harness = Harness::new(transport).await?;
    let publisher = harness.publisher("run-stop").await?;
    let mut subscriber = harness.subscriber("run-stop").await?;
    publisher.publish(1, vec![1_u8; 10]).await?;
    bounded("version 1", subscriber.changed()).await??;
    harness.shutdown.cancel();
    // The task ends by itself on cancellation; `changed` then reports the closure.
    let error = bounded("closed", subscriber.changed()).await?.unwrap_err();
    assert!(matches!(error, BroadcastError::Closed { .. }), "{error}");
    assert!(subscriber.is_closed());
    // The last generation stays readable.
    assert_eq!(subscriber.latest().unwrap().version, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// NATS only.

async fn nats_harness(adjust: impl FnOnce(&mut BroadcastConfig)) -> Result<Harness> {
    Harness::with_config(Transport::Nats, adjust).await
}

fn nats_broadcast(broadcast: Broadcast) -> NatsBroadcast {
    match broadcast {
        Broadcast::Nats(nats) => nats,
        Broadcast::Local(_) => unreachable!("nats harness"),
    }
}

/// The adapter versions stored in the run's bucket.
async fn stored_versions(broadcast: &NatsBroadcast) -> Result<Vec<u64>> {
    let jetstream = async_nats::jetstream::new(broadcast.client().clone());
    let store = jetstream
        .get_object_store(&broadcast.names().bucket)
        .await?;
    let mut versions: Vec<u64> = store
        .list()
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter_map(|info| NatsNames::parse_object_name(&info.name))
        .collect();
    versions.sort();
    Ok(versions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pruning_keeps_the_last_k_versions() -> Result<()> {
    let harness = nats_harness(|config| config.keep_last = 2).await?;
    let broadcast = nats_broadcast(harness.broadcast("run-prune").await?);
    let publisher = broadcast.publisher().await?;
    let mut pruned = Vec::new();
    for version in 1..=5 {
        let receipt = publisher
            .publish(version, random_adapter(300_000, version))
            .await?;
        pruned.extend(receipt.pruned);
        let stored = stored_versions(&broadcast).await?;
        let expected: Vec<u64> = (version.saturating_sub(1).max(1)..=version).collect();
        assert_eq!(stored, expected, "after publishing v{version}");
    }
    assert_eq!(pruned, vec![1, 2, 3]);

    // The announcement stream keeps the same window; a late joiner still gets v5.
    let mut late = harness.subscriber("run-prune").await?;
    let generation = bounded("latest after pruning", late.changed()).await??;
    assert_eq!(generation.version, 5);
    assert!(generation.bytes[..] == random_adapter(300_000, 5)[..]);

    // Pruning follows publication order, not version numbers: a restarted learner that
    // publishes a lower version keeps it (and drops the oldest-published one).
    let receipt = publisher.publish(3, random_adapter(300_000, 33)).await?;
    assert_eq!(receipt.pruned, vec![4]);
    assert_eq!(stored_versions(&broadcast).await?, vec![3, 5]);
    harness.finish(&[&late]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_objects_are_readable_by_object_store_clients() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let harness = nats_harness(|_| {}).await?;
    let broadcast = nats_broadcast(harness.broadcast("run-compat").await?);
    let publisher = broadcast.publisher().await?;
    let jetstream = async_nats::jetstream::new(broadcast.client().clone());
    let store = jetstream
        .get_object_store(&broadcast.names().bucket)
        .await?;
    let read = |name: String| {
        let store = store.clone();
        async move {
            let mut object = store.get(name).await?;
            let mut bytes = Vec::new();
            // The stock reader checks the digest in the object info at the last chunk.
            object.read_to_end(&mut bytes).await?;
            anyhow::Ok((object.info().clone(), bytes))
        }
    };

    let adapter = random_adapter(2 * 1024 * 1024 + 5, 7);
    publisher.publish(1, adapter.clone()).await?;
    let (info, bytes) = read(NatsNames::object_name(1)).await?;
    assert!(bytes == adapter, "stock reader got different bytes");
    assert_eq!((info.size, info.chunks), (adapter.len(), 9));

    // Publishing the same version again replaces the object and purges its old chunks.
    let stream_messages = |jetstream: async_nats::jetstream::Context, name: String| async move {
        anyhow::Ok(
            jetstream
                .get_stream(name)
                .await?
                .info()
                .await?
                .state
                .messages,
        )
    };
    let stream_name = format!("OBJ_{}", broadcast.names().bucket);
    let before = stream_messages(jetstream.clone(), stream_name.clone()).await?;
    let replacement = random_adapter(2 * 1024 * 1024 + 5, 8);
    publisher.publish(1, replacement.clone()).await?;
    let (_, bytes) = read(NatsNames::object_name(1)).await?;
    assert!(bytes == replacement, "stock reader got the replaced bytes");
    let after = stream_messages(jetstream.clone(), stream_name).await?;
    assert_eq!(after, before, "old chunks were not purged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_overwritten_object_is_rejected_and_the_old_one_kept() -> Result<()> {
    let harness = nats_harness(|_| {}).await?;
    let broadcast = nats_broadcast(harness.broadcast("run-tamper").await?);
    let publisher = broadcast.publisher().await?;
    let mut subscriber = harness.subscriber("run-tamper").await?;
    publisher.publish(1, random_adapter(800_000, 1)).await?;
    bounded("version 1", subscriber.wait_for_version(1)).await??;

    // Someone writes different bytes under the name the announcement of v2 points to.
    let intended = random_adapter(800_000, 2);
    let tampered = random_adapter(800_000, 666);
    let jetstream = async_nats::jetstream::new(broadcast.client().clone());
    let store = jetstream
        .get_object_store(&broadcast.names().bucket)
        .await?;
    let object = NatsNames::object_name(2);
    store.put(object.as_str(), &mut &tampered[..]).await?;
    let announcement = tgrpo_broadcast::Announcement {
        run_id: "run-tamper".into(),
        version: 2,
        size: intended.len() as u64,
        sha256: Sha256Digest::of(&intended),
        object,
        published_at_ms: 0,
    };
    jetstream
        .publish(
            broadcast.names().subject.clone(),
            serde_json::to_vec(&announcement)?.into(),
        )
        .await?
        .await?;

    let state = wait_state(&subscriber, "rejection", |state| state.rejected == 1).await?;
    assert_eq!(state.version(), Some(1));
    let rejection = state.last_rejection.unwrap();
    assert_eq!(rejection.version, 2);
    assert_eq!(rejection.expected_sha256, Sha256Digest::of(&intended));
    assert_eq!(rejection.actual_sha256, Some(Sha256Digest::of(&tampered)));
    assert_eq!(subscriber.latest().unwrap().version, 1);

    // Garbage on the announcement subject is ignored, not fatal.
    broadcast
        .client()
        .publish(broadcast.names().subject.clone(), "not json".into())
        .await?;
    publisher.publish(3, random_adapter(800_000, 3)).await?;
    bounded("version 3", subscriber.wait_for_version(3)).await??;
    harness.finish(&[&subscriber]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_failed_fetch_is_retried_and_newer_versions_still_load() -> Result<()> {
    // A long resync interval: the retries must come from the fetch backoff.
    let harness = nats_harness(|config| config.resync_interval_s = 600.0).await?;
    let broadcast = nats_broadcast(harness.broadcast("run-missing").await?);
    let publisher = broadcast.publisher().await?;
    let mut subscriber = harness.subscriber("run-missing").await?;
    publisher.publish(1, random_adapter(500_000, 1)).await?;
    bounded("version 1", subscriber.wait_for_version(1)).await??;

    // Version 2 is announced, but its object is not there (say, pruned already).
    let missing = tgrpo_broadcast::Announcement {
        run_id: "run-missing".into(),
        version: 2,
        size: 10,
        sha256: Sha256Digest::of(b"0123456789"),
        object: NatsNames::object_name(2),
        published_at_ms: 0,
    };
    let jetstream = async_nats::jetstream::new(broadcast.client().clone());
    jetstream
        .publish(
            broadcast.names().subject.clone(),
            serde_json::to_vec(&missing)?.into(),
        )
        .await?
        .await?;
    let state = wait_state(&subscriber, "retried fetches", |state| {
        state.fetch_failures >= 2
    })
    .await?;
    assert_eq!(state.version(), Some(1), "the old adapter stays in use");
    assert_eq!(state.rejected, 0, "a missing object is not a corrupted one");

    // Once the object appears, the retry picks it up...
    let two = b"0123456789".to_vec();
    let store = jetstream
        .get_object_store(&broadcast.names().bucket)
        .await?;
    store
        .put(NatsNames::object_name(2).as_str(), &mut &two[..])
        .await?;
    let generation = bounded("version 2 after retry", subscriber.wait_for_version(2)).await??;
    assert!(generation.bytes[..] == two[..]);

    // ...and a newer version does not wait behind anything.
    publisher.publish(3, random_adapter(500_000, 3)).await?;
    bounded("version 3", subscriber.wait_for_version(3)).await??;
    harness.finish(&[&subscriber]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subscriber_catches_up_after_a_server_restart() -> Result<()> {
    // A long resync interval: catching up must come from the reconnect, not the timer.
    let mut harness = nats_harness(|config| {
        config.resync_interval_s = 600.0;
        config.storage = StorageKind::File;
    })
    .await?;
    let mut subscriber = harness.subscriber("run-restart").await?;
    {
        let publisher = harness.publisher("run-restart").await?;
        publisher.publish(1, random_adapter(900_000, 1)).await?;
        bounded("version 1", subscriber.wait_for_version(1)).await??;
    }

    let server = harness.server.as_mut().unwrap();
    server.stop();
    let states = subscriber.watch_state();
    // While the server is down, the subscriber keeps serving what it has.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.latest().unwrap().version, 1);
    server.restart().await?;

    // A learner that (re)connects right away publishes v2, maybe before the worker's
    // client is back: the worker must catch up either way.
    let publisher = harness.publisher("run-restart").await?;
    publisher.publish(2, random_adapter(900_000, 2)).await?;
    let generation = bounded("version 2 after restart", subscriber.wait_for_version(2)).await??;
    assert!(generation.bytes[..] == random_adapter(900_000, 2)[..]);
    assert_eq!(states.borrow().rejected, 0);

    // And live announcements flow again afterwards.
    publisher.publish(3, random_adapter(900_000, 3)).await?;
    bounded("version 3", subscriber.wait_for_version(3)).await??;
    harness.finish(&[&subscriber]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_connect_failure_names_the_url() -> Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = BroadcastConfig {
        url: format!("nats://127.0.0.1:{port}"),
        connect_timeout_s: 2.0,
        ..Default::default()
    };
    let error = NatsBroadcast::connect("run-x", &config).await.unwrap_err();
    assert!(error.to_string().contains(&config.url), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bench_runs_on_a_small_adapter() -> Result<()> {
    let harness = nats_harness(|_| {}).await?;
    let options = tgrpo_broadcast::bench::BenchOptions {
        url: harness.config.url.clone(),
        adapter_bytes: 2_000_000,
        subscribers: 2,
        chunk_sizes: vec![256 << 10, 1 << 20],
        repetitions: 2,
        storage: StorageKind::File,
    };
    let report = tgrpo_broadcast::bench::bench_broadcast(&options).await?;
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.rows[0].chunks, 8);
    assert_eq!(report.rows[1].chunks, 2);
    for row in &report.rows {
        assert_eq!(row.end_to_end.len(), 2);
        assert!(row.end_to_end.iter().all(|latency| !latency.is_zero()));
    }
    assert!(!report.baseline.is_zero());
    assert!(report.to_string().contains("chunk"));
    Ok(())
}
