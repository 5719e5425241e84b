//! Adapters reaching a worker's policy: an adapter that does not load (garbage bytes with
//! a valid digest, or an adapter for another model) leaves the installed one in place and
//! is not retried; a newer good one is installed; and a feed whose NATS server is down at
//! start connects when the server comes up and delivers the newest adapter.

mod common;

use std::time::Duration;

use candle_core::{DType, Device};
use tgrpo_broadcast::testing::NatsServer;
use tgrpo_broadcast::{Broadcast, BroadcastConfig};
use tgrpo_policy::{LoraAdapter, LoraConfig, LoraInit, ModelConfig};
use tgrpo_rollout::{
    AdapterFeed, AdapterInstaller, BackoffConfig, InstallOutcome, SampleTask, Sampler,
    SamplerConfig, SamplingSettings,
};
use tokio_util::sync::CancellationToken;

fn adapter_bytes(model: &ModelConfig, seed: u64) -> Vec<u8> {
    LoraAdapter::init(
        model,
        &LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        LoraInit::Random { bound: 0.5 },
        seed,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
    .to_safetensors_bytes("scripted")
    .unwrap()
}

/// Waits until the feed's newest generation is `version`.
async fn until_latest(
    feed: &mut AdapterFeed,
    version: u64,
) -> std::sync::Arc<tgrpo_broadcast::AdapterGeneration> {
    for _ in 0..500 {
        if let Some(generation) = feed
            .latest()
            .filter(|generation| generation.version == version)
        {
            return generation;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the feed never delivered version {version}");
}

#[tokio::test]
async fn an_adapter_that_does_not_load_leaves_the_installed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = common::scripted_policy(dir.path(), 12.0);
    let model = policy.model().config().clone();
    let shutdown = CancellationToken::new();
    let broadcast = Broadcast::local("adapters", &BroadcastConfig::default()).unwrap();
    let publisher = broadcast.publisher().await.unwrap();
    let mut feed = AdapterFeed::subscriber(broadcast.subscribe(&shutdown));
    let mut installer = AdapterInstaller::new(policy.clone());
    assert_eq!(installer.installed(), None);

    publisher
        .publish(1, adapter_bytes(&model, 1))
        .await
        .unwrap();
    let generation = until_latest(&mut feed, 1).await;
    assert_eq!(
        installer.offer(generation).await,
        InstallOutcome::Installed(1)
    );
    assert_eq!(policy.adapter_slot().version(), Some(1));

    // Bytes with a valid digest that are no adapter at all.
    publisher
        .publish(2, b"not a safetensors file".to_vec())
        .await
        .unwrap();
    let garbage = until_latest(&mut feed, 2).await;
    assert_eq!(
        installer.offer(garbage.clone()).await,
        InstallOutcome::Failed(2)
    );
    assert_eq!(
        policy.adapter_slot().version(),
        Some(1),
        "the old adapter stays"
    );
    assert_eq!(
        installer.offer(garbage).await,
        InstallOutcome::Unchanged,
        "a failed version is not retried"
    );

    // A well-formed adapter for a model of another shape.
    let mut other = model.clone();
    other.hidden_size = 32;
    other.head_dim = 8;
    other.intermediate_size = 64;
    publisher
        .publish(3, adapter_bytes(&other, 3))
        .await
        .unwrap();
    let wrong_model = until_latest(&mut feed, 3).await;
    assert_eq!(
        installer.offer(wrong_model).await,
        InstallOutcome::Failed(3)
    );
    assert_eq!(installer.installed(), Some(1));

    // Samples taken now report the adapter actually in use.
    let sampler = Sampler::new(
        policy.clone(),
        common::local_scorer().await,
        SamplerConfig::default(),
    )
    .unwrap();
    let task = SampleTask {
        key: "k".into(),
        problem: common::problems().remove(0),
    };
    let settings = SamplingSettings {
        num_samples: 1,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 16,
        stop: Vec::new(),
        seed: 0,
    };
    let batch = sampler.run(vec![task], &settings, &shutdown).await.unwrap();
    assert_eq!(batch.adapter_version, Some(1));

    publisher
        .publish(4, adapter_bytes(&model, 4))
        .await
        .unwrap();
    let good = until_latest(&mut feed, 4).await;
    assert_eq!(installer.offer(good).await, InstallOutcome::Installed(4));
    assert_eq!((installer.loaded(), installer.failed()), (2, 2));
    shutdown.cancel();
}

#[tokio::test]
async fn a_feed_connects_when_nats_comes_up_late_and_gets_the_newest_adapter() {
    let mut server = NatsServer::start().await.expect("nats-server starts");
    let config = BroadcastConfig {
        url: server.url(),
        connect_timeout_s: 0.5,
        ..BroadcastConfig::default()
    };
    server.stop();
    let shutdown = CancellationToken::new();
    let backoff = BackoffConfig {
        initial_ms: 50,
        max_ms: 200,
        ..BackoffConfig::default()
    };
    let mut feed = AdapterFeed::connect_nats("late".into(), config.clone(), backoff, &shutdown);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        feed.latest().is_none(),
        "nothing can arrive while nats is down"
    );
    assert!(!feed.is_none(), "the feed keeps trying");

    server.restart().await.expect("nats-server restarts");
    let broadcast = Broadcast::connect_nats("late", &config).await.unwrap();
    let publisher = broadcast.publisher().await.unwrap();
    publisher.publish(1, vec![1_u8; 1000]).await.unwrap();
    publisher.publish(2, vec![2_u8; 2000]).await.unwrap();
    assert!(
        feed.wait_for_version(2, Duration::from_secs(20)).await,
        "the feed connected and caught up"
    );
    let generation = feed.latest().unwrap();
    assert_eq!((generation.version, generation.bytes.len()), (2, 2000));
    shutdown.cancel();
}
