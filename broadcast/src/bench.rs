//! The broadcast-latency benchmark behind `tgrpo bench broadcast`.
//!
//! Measures, for a production-size adapter (Qwen2.5-1.5B with LoRA r=64 on all seven
//! projections: 73.9 M parameters, ~148 MB in bf16; random bytes), the time from
//! [`crate::AdapterPublisher::publish`] being called until every subscriber has fetched,
//! verified and swapped in the new generation, over loopback NATS. Each subscriber has its
//! own connection, as separate rollout-worker processes would.
//!
//! The baseline, measured in the same process, is the floor for the same job without a
//! broker: the publisher writes the bytes straight to each receiver over loopback TCP and
//! every receiver hashes what it reads. The ratio says what NATS + JetStream cost on top.

use std::fmt;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{BroadcastConfig, DEFAULT_CHUNK_SIZE, StorageKind};
use crate::error::BroadcastError;
use crate::nats::NatsBroadcast;
use crate::types::Sha256Digest;

/// Trainable parameters of Qwen2.5-1.5B with LoRA r=64 on q,k,v,o,gate,up,down:
/// 28 layers × 64 × (1536+1536 + 1536+256 + 1536+256 + 1536+1536 + 1536+8960 ×2 + 8960+1536).
pub const PRODUCTION_ADAPTER_PARAMETERS: usize = 73_859_072;

/// The production adapter's size in bf16 (2 bytes per parameter), ignoring the small
/// safetensors header.
pub const PRODUCTION_ADAPTER_BYTES: usize = PRODUCTION_ADAPTER_PARAMETERS * 2;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The NATS server (with JetStream) to use; the benchmark creates and deletes its own
    /// run's bucket and stream there.
    pub url: String,
    /// Adapter size in bytes.
    pub adapter_bytes: usize,
    /// Number of subscribers, each on its own connection.
    pub subscribers: usize,
    /// Chunk sizes to compare (one row each).
    pub chunk_sizes: Vec<usize>,
    /// Publishes per chunk size (after one untimed warm-up publish).
    pub repetitions: usize,
    /// Storage of the bucket and stream.
    pub storage: StorageKind,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            url: BroadcastConfig::default().url,
            adapter_bytes: PRODUCTION_ADAPTER_BYTES,
            subscribers: 2,
            chunk_sizes: vec![DEFAULT_CHUNK_SIZE],
            repetitions: 3,
            storage: StorageKind::File,
        }
    }
}

/// The timings of one chunk size.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    /// Bytes per chunk.
    pub chunk_size: usize,
    /// Chunks per adapter.
    pub chunks: usize,
    /// Publish call to the last subscriber holding the verified generation, per repetition.
    pub end_to_end: Vec<Duration>,
    /// Publish call to its return (upload, announce, prune), per repetition.
    pub publish: Vec<Duration>,
}

impl ChunkRow {
    /// Median end-to-end latency.
    pub fn median(&self) -> Duration {
        median(&self.end_to_end)
    }
}

/// The benchmark's result; `Display` prints the table.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Adapter size in bytes.
    pub adapter_bytes: usize,
    /// Number of subscribers.
    pub subscribers: usize,
    /// Median of the direct-TCP baseline (same bytes, same receivers, no broker).
    pub baseline: Duration,
    /// One row per chunk size.
    pub rows: Vec<ChunkRow>,
}

/// The latency the issue asks for.
pub const TARGET: Duration = Duration::from_secs(2);

impl BenchReport {
    /// The row with the lowest median latency.
    pub fn best(&self) -> Option<&ChunkRow> {
        self.rows.iter().min_by_key(|row| row.median())
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "adapter broadcast: {:.1} MB to {} subscribers over loopback NATS (target < {:?})",
            self.adapter_bytes as f64 / 1e6,
            self.subscribers,
            TARGET
        )?;
        writeln!(
            f,
            "baseline (direct TCP fan-out + sha256, no broker): {:.3} s",
            self.baseline.as_secs_f64()
        )?;
        writeln!(
            f,
            "{:>10} {:>7} {:>12} {:>12} {:>12} {:>9} {:>7}",
            "chunk", "chunks", "median s", "min s", "publish s", "x base", "target"
        )?;
        for row in &self.rows {
            let median = row.median();
            writeln!(
                f,
                "{:>10} {:>7} {:>12.3} {:>12.3} {:>12.3} {:>9.2} {:>7}",
                row.chunk_size,
                row.chunks,
                median.as_secs_f64(),
                row.end_to_end
                    .iter()
                    .min()
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64(),
                super::bench::median(&row.publish).as_secs_f64(),
                median.as_secs_f64() / self.baseline.as_secs_f64().max(1e-9),
                if median < TARGET { "ok" } else { "MISSED" }
            )?;
        }
        Ok(())
    }
}

/// Runs the benchmark against the server at `options.url`.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), tgrpo_broadcast::BroadcastError> {
/// use tgrpo_broadcast::bench::{BenchOptions, bench_broadcast};
/// let report = bench_broadcast(&BenchOptions { url: "nats://127.0.0.1:4222".into(), ..Default::default() }).await?;
/// println!("{report}");
/// # Ok(())
/// # }
/// ```
pub async fn bench_broadcast(options: &BenchOptions) -> Result<BenchReport, BroadcastError> {
    if options.subscribers == 0 || options.repetitions == 0 || options.chunk_sizes.is_empty() {
        return Err(BroadcastError::InvalidConfig {
            field: "bench",
            reason: "needs at least one subscriber, repetition and chunk size".to_string(),
        });
    }
    let mut adapter = vec![0_u8; options.adapter_bytes];
    rand::rngs::StdRng::seed_from_u64(0x7470_6f72_6762).fill_bytes(&mut adapter);

    let mut baselines = Vec::with_capacity(options.repetitions);
    for _ in 0..options.repetitions {
        baselines.push(direct_tcp_fan_out(&adapter, options.subscribers).await?);
    }
    let baseline = median(&baselines);
    tracing::info!(baseline_s = baseline.as_secs_f64(), "direct tcp baseline");

    let mut rows = Vec::with_capacity(options.chunk_sizes.len());
    for &chunk_size in &options.chunk_sizes {
        rows.push(bench_chunk_size(options, chunk_size, &mut adapter).await?);
    }
    Ok(BenchReport {
        adapter_bytes: options.adapter_bytes,
        subscribers: options.subscribers,
        baseline,
        rows,
    })
}

async fn bench_chunk_size(
    options: &BenchOptions,
    chunk_size: usize,
    adapter: &mut [u8],
) -> Result<ChunkRow, BroadcastError> {
    let config = BroadcastConfig {
        url: options.url.clone(),
        chunk_size,
        storage: options.storage,
        keep_last: 2,
        max_adapter_bytes: (options.adapter_bytes as u64).max(1),
        ..Default::default()
    };
    let run_id = format!("bench-{}-{chunk_size}", std::process::id());
    let publishing = NatsBroadcast::connect(&run_id, &config).await?;
    publishing.delete_run().await?;
    let publisher = publishing.publisher().await?;
    let shutdown = CancellationToken::new();
    let mut subscribers = Vec::with_capacity(options.subscribers);
    for _ in 0..options.subscribers {
        subscribers.push(
            NatsBroadcast::connect(&run_id, &config)
                .await?
                .subscribe(&shutdown),
        );
    }

    let mut row = ChunkRow {
        chunk_size,
        chunks: options.adapter_bytes.div_ceil(chunk_size),
        end_to_end: Vec::with_capacity(options.repetitions),
        publish: Vec::with_capacity(options.repetitions),
    };
    // Version 1 warms up the server's store, connections and allocator; not timed.
    for version in 1..=(options.repetitions as u64 + 1) {
        // A different adapter each time, as after a real update.
        adapter[..8].copy_from_slice(&version.to_le_bytes());
        let bytes = bytes::Bytes::copy_from_slice(adapter);
        let started = Instant::now();
        let waits = subscribers.iter().map(|subscriber| {
            let mut subscriber = subscriber.clone();
            async move {
                subscriber.wait_for_version(version).await?;
                Ok::<_, BroadcastError>(Instant::now())
            }
        });
        let (receipt, loaded) = tokio::join!(
            publisher.publish(version, bytes),
            futures::future::try_join_all(waits)
        );
        let receipt = receipt?;
        let last_loaded = loaded?.into_iter().max().unwrap_or(started);
        if version > 1 {
            row.end_to_end.push(last_loaded - started);
            row.publish.push(receipt.elapsed);
        }
        row.chunks = receipt.chunks;
    }
    for subscriber in &subscribers {
        let state = subscriber.state();
        if state.rejected > 0 {
            tracing::warn!(
                rejected = state.rejected,
                "benchmark subscriber rejected adapters"
            );
        }
        subscriber.close().await;
    }
    publishing.delete_run().await?;
    tracing::info!(
        chunk_size,
        median_s = row.median().as_secs_f64(),
        "benchmarked chunk size"
    );
    Ok(row)
}

/// The broker-less floor: write `bytes` to `receivers` loopback TCP connections at once;
/// each receiver reads everything and hashes it. Returns the time until the last is done.
async fn direct_tcp_fan_out(bytes: &[u8], receivers: usize) -> Result<Duration, BroadcastError> {
    let io_error =
        |source: std::io::Error| BroadcastError::nats("direct tcp baseline", "127.0.0.1", source);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io_error)?;
    let address = listener.local_addr().map_err(io_error)?;
    let size = bytes.len();
    let expected = Sha256Digest::of(bytes);
    let shared = bytes::Bytes::copy_from_slice(bytes);

    let started = Instant::now();
    let readers: Vec<_> = (0..receivers)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(address).await?;
                let mut buffer = Vec::with_capacity(size);
                let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
                loop {
                    let start = buffer.len();
                    if buffer.capacity() == start {
                        buffer.reserve(1 << 20);
                    }
                    let read = stream.read_buf(&mut buffer).await?;
                    if read == 0 {
                        break;
                    }
                    sha2::Digest::update(&mut hasher, &buffer[start..]);
                }
                Ok::<_, std::io::Error>(Sha256Digest(sha2::Digest::finalize(hasher).into()))
            })
        })
        .collect();
    let mut writers = Vec::with_capacity(receivers);
    for _ in 0..receivers {
        let (mut stream, _peer) = listener.accept().await.map_err(io_error)?;
        let shared = shared.clone();
        writers.push(tokio::spawn(async move {
            stream.write_all(&shared).await?;
            stream.shutdown().await
        }));
    }
    for writer in writers {
        writer
            .await
            .map_err(|error| io_error(std::io::Error::other(error)))?
            .map_err(io_error)?;
    }
    for reader in readers {
        let digest = reader
            .await
            .map_err(|error| io_error(std::io::Error::other(error)))?
            .map_err(io_error)?;
        if digest != expected {
            return Err(io_error(std::io::Error::other("baseline digest mismatch")));
        }
    }
    Ok(started.elapsed())
}

/// The median of `values` (the upper one for an even count); zero when empty.
fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_adapter_size_matches_the_lora_shapes() {
        // Qwen2.5-1.5B: hidden 1536, 2 KV heads × 128 = 256, intermediate 8960, 28 layers.
        let (hidden, kv, intermediate, layers, rank) = (1536, 256, 8960, 28, 64);
        let per_layer = [
            (hidden, hidden),       // q_proj
            (hidden, kv),           // k_proj
            (hidden, kv),           // v_proj
            (hidden, hidden),       // o_proj
            (hidden, intermediate), // gate_proj
            (hidden, intermediate), // up_proj
            (intermediate, hidden), // down_proj
        ]
        .iter()
        .map(|(d_in, d_out)| rank * (d_in + d_out))
        .sum::<usize>();
        assert_eq!(layers * per_layer, PRODUCTION_ADAPTER_PARAMETERS);
        assert!((147_000_000..149_000_000).contains(&PRODUCTION_ADAPTER_BYTES));
    }

    #[test]
    fn median_picks_the_middle() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
