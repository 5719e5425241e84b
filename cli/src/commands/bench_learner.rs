//! `tgrpo bench learner`: learner-step throughput on random-weight models of a chosen
//! shape, next to a bare LoRA forward/backward/AdamW step measured in the same process.
//!
//! A learner step is what `tgrpo_learner::Learner::train_batch` does for a GRPO batch:
//! reference forward (adapter off), train-mode forward and backward of the composite loss,
//! clipping, AdamW. Tokens/s count every token of every sequence (B × T).

use clap::Args;
use tgrpo_learner::bench::{LearnerBenchOptions, ModelShape, bench_learner};
use tgrpo_learner::config::{open_device, parse_dtype};
use tgrpo_policy::LoraConfig;

/// Flags of `tgrpo bench learner`.
#[derive(Debug, Args)]
pub struct LearnerBenchArgs {
    /// Model shapes, comma separated: `tiny`, `smollm2-135m`, `qwen2.5-1.5b`.
    #[arg(
        long,
        env = "TGRPO_BENCH_SHAPES",
        value_delimiter = ',',
        default_value = "tiny,smollm2-135m"
    )]
    shapes: Vec<String>,

    /// Sequences per step (B).
    #[arg(long, env = "TGRPO_BENCH_SEQUENCES", default_value_t = 16)]
    sequences: usize,

    /// Prompt tokens per sequence.
    #[arg(long, env = "TGRPO_BENCH_PROMPT_LEN", default_value_t = 128)]
    prompt_len: usize,

    /// Completion tokens per sequence (T = prompt + completion).
    #[arg(long, env = "TGRPO_BENCH_COMPLETION_LEN", default_value_t = 384)]
    completion_len: usize,

    /// Timed steps of each kind (after the warm-up).
    #[arg(long, env = "TGRPO_BENCH_STEPS", default_value_t = 3)]
    steps: usize,

    /// Untimed steps of each kind first.
    #[arg(long, env = "TGRPO_BENCH_WARMUP", default_value_t = 1)]
    warmup: usize,

    /// LoRA rank (alpha is twice it, as in production; dropout 0.05, seven targets).
    #[arg(long, env = "TGRPO_BENCH_LORA_RANK", default_value_t = 64)]
    lora_rank: usize,

    /// Micro-batches per step (gradient accumulation): activation memory of B/N sequences.
    #[arg(long, env = "TGRPO_BENCH_MICRO_BATCHES", default_value_t = 1)]
    micro_batches: usize,

    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "TGRPO_BENCH_DEVICE", default_value = "cpu")]
    device: String,

    /// Base-weight dtype: `auto` (f32 on CPU, bf16 on GPU), `f32`, `bf16`, `f16`.
    #[arg(long, env = "TGRPO_BENCH_DTYPE", default_value = "auto")]
    dtype: String,
}

/// Runs the benchmark and prints one row per shape.
pub async fn run(args: LearnerBenchArgs) -> anyhow::Result<()> {
    let shapes = args
        .shapes
        .iter()
        .map(|name| {
            ModelShape::parse(name).ok_or_else(|| {
                anyhow::anyhow!("unknown shape `{name}` (tiny, smollm2-135m, qwen2.5-1.5b)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device = open_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype, device.is_cpu())?;
    println!(
        "learner step: B={} × T={} ({} prompt + {} completion) in {} micro-batch(es), LoRA r={}, {} {:?}",
        args.sequences,
        args.prompt_len + args.completion_len,
        args.prompt_len,
        args.completion_len,
        args.micro_batches.max(1),
        args.lora_rank,
        args.device,
        dtype,
    );
    println!(
        "| shape | base params | LoRA params | learner s/step | learner tokens/s | baseline s/step | baseline tokens/s | learner / baseline |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for shape in shapes {
        let options = LearnerBenchOptions {
            shape,
            sequences: args.sequences,
            prompt_len: args.prompt_len,
            completion_len: args.completion_len,
            steps: args.steps,
            warmup: args.warmup,
            lora: LoraConfig {
                r: args.lora_rank,
                alpha: 2.0 * args.lora_rank as f64,
                ..Default::default()
            },
            device: device.clone(),
            dtype,
            seed: 42,
            micro_batches: args.micro_batches.max(1),
        };
        // Seconds to minutes of pure compute: off the async runtime.
        let report = tokio::task::spawn_blocking(move || bench_learner(&options)).await??;
        println!(
            "| {} | {:.1} M | {:.2} M | {:.3} | {:.0} | {:.3} | {:.0} | {:.2}x |",
            shape.name(),
            report.base_parameters as f64 / 1e6,
            report.adapter_parameters as f64 / 1e6,
            report.learner_s(),
            report.learner_tokens_per_s(),
            report.baseline_s(),
            report.baseline_tokens_per_s(),
            report.ratio(),
        );
    }
    println!(
        "baseline: one train-mode forward + mean NLL + backward + candle-nn AdamW on the same batch (no reference pass, no clipping)"
    );
    Ok(())
}
