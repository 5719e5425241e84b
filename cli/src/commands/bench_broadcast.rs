//! `tgrpo bench broadcast`: adapter broadcast latency over loopback NATS.
//!
//! Publishes a production-size adapter (Qwen2.5-1.5B, LoRA r=64, bf16: ~148 MB of random
//! bytes) to N subscribers, each on its own connection, and reports the time until all of
//! them have fetched, verified and swapped it in, per chunk size, next to a broker-less
//! baseline measured in the same process. Without `--url` it starts a private
//! nats-server with JetStream on a free port.

use clap::Args;
use tgrpo_broadcast::StorageKind;
use tgrpo_broadcast::bench::{BenchOptions, PRODUCTION_ADAPTER_BYTES, TARGET, bench_broadcast};

/// Flags of `tgrpo bench broadcast`.
#[derive(Debug, Args)]
pub struct BroadcastBenchArgs {
    /// NATS server with JetStream to use; when absent, a private nats-server is started
    /// on a free loopback port (`$NATS_SERVER` or /usr/sbin/nats-server).
    #[arg(long, env = "TGRPO_BENCH_NATS_URL")]
    url: Option<String>,

    /// Adapter size in bytes (default: Qwen2.5-1.5B at r=64 in bf16).
    #[arg(long, env = "TGRPO_BENCH_ADAPTER_BYTES", default_value_t = PRODUCTION_ADAPTER_BYTES)]
    adapter_bytes: usize,

    /// Number of subscribers (rollout workers), each with its own connection.
    #[arg(long, env = "TGRPO_BENCH_SUBSCRIBERS", default_value_t = 2)]
    subscribers: usize,

    /// Object-store chunk sizes to compare, comma separated.
    #[arg(
        long,
        env = "TGRPO_BENCH_CHUNK_SIZES",
        value_delimiter = ',',
        default_value = "131072,262144,524288,1048576"
    )]
    chunk_sizes: Vec<usize>,

    /// Timed publishes per chunk size (after one warm-up).
    #[arg(long, env = "TGRPO_BENCH_REPETITIONS", default_value_t = 3)]
    repetitions: usize,

    /// JetStream storage of the bucket (`file` as in production, or `memory`).
    #[arg(long, env = "TGRPO_BENCH_STORAGE", default_value = "file", value_parser = ["file", "memory"])]
    storage: String,
}

/// Runs the benchmark and prints the table.
pub async fn run(args: BroadcastBenchArgs) -> anyhow::Result<()> {
    let mut private_server = None;
    let url = match args.url {
        Some(url) => url,
        None => {
            let server = tgrpo_broadcast::testing::NatsServer::start().await?;
            let url = server.url();
            tracing::info!(%url, "started a private nats-server for the benchmark");
            private_server = Some(server);
            url
        }
    };
    let options = BenchOptions {
        url,
        adapter_bytes: args.adapter_bytes,
        subscribers: args.subscribers,
        chunk_sizes: args.chunk_sizes,
        repetitions: args.repetitions,
        storage: if args.storage == "memory" {
            StorageKind::Memory
        } else {
            StorageKind::File
        },
    };
    let report = bench_broadcast(&options).await?;
    print!("{report}");
    if let Some(best) = report.best() {
        println!(
            "best: chunk {} B, median {:.3} s ({:.2}x the direct-TCP baseline, target < {:?})",
            best.chunk_size,
            best.median().as_secs_f64(),
            best.median().as_secs_f64() / report.baseline.as_secs_f64().max(1e-9),
            TARGET
        );
    }
    drop(private_server);
    Ok(())
}
