//! `tgrpo bench sample`: batched sampling throughput of the policy crate at several batch
//! sizes (LoRA r=64 attached), next to candle-transformers' own model generating from the
//! same weights at the same precision in the same process (see `tgrpo_policy::bench`).
//!
//! Prints a markdown table with the two target ratios (batch-8 aggregate ≥ 4× batch 1;
//! our batch 1 ≥ 0.8× the reference) and the load average before and after, since the
//! numbers are only comparable under similar load.

use std::path::PathBuf;

use clap::Args;

use super::bench::load_average;
use tgrpo_policy::bench::{
    BenchModel, SampleBenchOptions, SampleBenchReport, bench_sample, default_models_dir,
};

/// Flags of `tgrpo bench sample`.
#[derive(Debug, Args)]
pub struct SampleBenchArgs {
    /// Models, comma separated: `smollm2`, `qwen` (the GGUFs of
    /// ../shared/tools/real-models.sh; absent ones are skipped with a message) or a random
    /// shape: `tiny`, `smollm2-135m`, `qwen2.5-1.5b` (the production policy's shape).
    #[arg(
        long,
        env = "TGRPO_BENCH_MODELS",
        value_delimiter = ',',
        default_value = "tiny,smollm2,qwen"
    )]
    models: Vec<String>,

    /// Batch sizes of our sampler (batch 1 is always measured).
    #[arg(
        long,
        env = "TGRPO_BENCH_BATCHES",
        value_delimiter = ',',
        default_value = "1,8,32"
    )]
    batches: Vec<usize>,

    /// Prompt tokens per request.
    #[arg(long, env = "TGRPO_BENCH_PROMPT", default_value_t = 32)]
    prompt_len: usize,

    /// New tokens per request (EOS ignored).
    #[arg(long, env = "TGRPO_BENCH_NEW_TOKENS", default_value_t = 64)]
    new_tokens: usize,

    /// Batch-1 rounds, ours and the reference interleaved; the best of each is kept.
    #[arg(long, env = "TGRPO_BENCH_ROUNDS", default_value_t = 2)]
    rounds: usize,

    /// LoRA rank of the attached adapter (alpha twice it, all seven projections).
    #[arg(long, env = "TGRPO_BENCH_LORA_RANK", default_value_t = 64)]
    lora_rank: usize,

    /// Directory holding the GGUF files [default: ~/.cache/tgrpo-models].
    #[arg(long, env = "TGRPO_MODELS_DIR")]
    models_dir: Option<PathBuf>,

    /// `cpu`, `cuda` or `cuda:N` (ours and the reference both run there).
    #[arg(long, env = "TGRPO_BENCH_DEVICE", default_value = "cpu")]
    device: String,

    /// Weight dtype of both models: `auto` (f32 on CPU, bf16 on GPU), `f32`, `bf16`, `f16`.
    #[arg(long, env = "TGRPO_BENCH_DTYPE", default_value = "auto")]
    dtype: String,
}

/// Runs the benchmark and prints one row per model.
pub async fn run(args: SampleBenchArgs) -> anyhow::Result<()> {
    let models = args
        .models
        .iter()
        .map(|name| {
            BenchModel::parse(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown model `{name}` (smollm2, qwen, tiny, smollm2-135m, qwen2.5-1.5b)"
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.new_tokens < 2 {
        anyhow::bail!("--new-tokens must be at least 2 (decode rates need a decode step)");
    }
    if args.prompt_len == 0 {
        anyhow::bail!("--prompt-len must be at least 1");
    }
    if args.batches.contains(&0) {
        anyhow::bail!("--batches must be positive");
    }
    let mut batches = args.batches.clone();
    batches.push(1);
    batches.sort_unstable();
    batches.dedup();
    let device = tgrpo_policy::device::open_device(&args.device).map_err(anyhow::Error::msg)?;
    let dtype = tgrpo_policy::device::parse_dtype(&args.dtype, device.is_cpu())
        .map_err(anyhow::Error::msg)?;
    let options = SampleBenchOptions {
        batches: batches.clone(),
        prompt_len: args.prompt_len,
        new_tokens: args.new_tokens,
        rounds: args.rounds.max(1),
        lora_rank: args.lora_rank,
        models_dir: args.models_dir.unwrap_or_else(default_models_dir),
        device,
        dtype,
    };
    println!(
        "sampling: prompt {} tokens, {} new tokens, {} {:?}, LoRA r={} on all 7 projections; load average {} at start",
        options.prompt_len,
        options.new_tokens,
        args.device,
        options.dtype,
        options.lora_rank,
        load_average()
    );
    println!(
        "cells: tokens/s end-to-end (prefill included) / decode only; ratios on decode tokens/s"
    );
    println!("{}", SampleBenchReport::table_header(&batches));
    for model in models {
        if let Some(file) = model.gguf_file() {
            let path = options.models_dir.join(file);
            if !path.is_file() {
                println!(
                    "| {} | skipped: {} absent (run ../shared/tools/real-models.sh) |",
                    model.name(),
                    path.display()
                );
                continue;
            }
        }
        let model_options = options.clone();
        // Seconds to minutes of pure compute: off the async runtime.
        let report =
            tokio::task::spawn_blocking(move || bench_sample(model, &model_options)).await??;
        println!("{}", report.table_row(&batches));
    }
    println!(
        "reference: candle-transformers' qwen2/llama (batch 1, same weights, device and dtype, no LoRA); targets: ours/ref B=1 ≥ 0.8, B=8/B=1 ≥ 4; load average {} at end",
        load_average()
    );
    Ok(())
}
