//! `tgrpo bench ...`: benchmarks that print a ratio against a baseline measured in the
//! same process (performance is measured here, never in timed tests). One module per
//! target: `bench_broadcast`, `bench_executor`, `bench_learner`; `bench loop` (the
//! pipeline's `bench_loop`) is printed here.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tgrpo_pipeline::bench_loop::{LoopBenchOptions, LoopRunStats, bench_loop};

use super::{bench_broadcast, bench_executor, bench_learner, bench_sample};

/// What to benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Adapter broadcast latency over loopback NATS against a broker-less baseline.
    Broadcast(bench_broadcast::BroadcastBenchArgs),
    /// The executor's warm sandbox pool against a fresh python per program, on the
    /// MBPP references and a wrong variant of each.
    Executor(bench_executor::ExecutorBenchArgs),
    /// Learner-step throughput (tokens/s) on random-weight model shapes, against a bare
    /// LoRA forward/backward/AdamW step.
    Learner(bench_learner::LearnerBenchArgs),
    /// Batched sampling tokens/s (batch 1, 8, 32; LoRA r=64) on the tiny model and the
    /// real GGUFs, against candle-transformers' own model on the same weights.
    Sample(bench_sample::SampleBenchArgs),
    /// The whole local-mode loop on the CPU demo's run: rollout groups/s and tokens/s,
    /// synchronous (max_staleness = 0) against asynchronous (rollout and learning
    /// overlapped), and their ratio.
    Loop(LoopBenchArgs),
}

/// Flags of `tgrpo bench loop`.
#[derive(Debug, Args)]
pub struct LoopBenchArgs {
    /// Optimizer steps per measured run.
    #[arg(long, env = "TGRPO_BENCH_STEPS", default_value_t = 20)]
    steps: usize,

    /// `grpo.max_staleness` of the asynchronous mode (≥ 1; the demo's is 2).
    #[arg(long, default_value_t = 2)]
    staleness: u64,

    /// Rollout workers (`local.rollout_workers`).
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// Measured runs of each mode, alternating sync and async.
    #[arg(long, default_value_t = 1)]
    repeats: usize,

    /// Data, traces, the demo model and each run's outputs (runs are replaced).
    #[arg(long, default_value = "outputs/bench-loop")]
    work_dir: PathBuf,
}

/// Runs the chosen benchmark and prints its report.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Broadcast(args) => bench_broadcast::run(args).await,
        BenchCommand::Executor(args) => bench_executor::run(args).await,
        BenchCommand::Learner(args) => bench_learner::run(args).await,
        BenchCommand::Sample(args) => bench_sample::run(args).await,
        BenchCommand::Loop(args) => run_loop(args).await,
    }
}

/// The 1-minute load average, printed next to benchmark numbers so they are read against
/// the machine's load (`?` where /proc/loadavg is absent, i.e. off Linux).
pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// Runs `tgrpo bench loop` and prints one row per run, the pooled rows and the ratio.
async fn run_loop(args: LoopBenchArgs) -> anyhow::Result<()> {
    let options = LoopBenchOptions {
        steps: args.steps,
        async_staleness: args.staleness,
        workers: args.workers,
        repeats: args.repeats,
        work_dir: args.work_dir,
        base: None,
    };
    let demo = tgrpo_pipeline::demo::config();
    println!(
        "local-mode loop on the CPU demo's run: {} prompts × {} samples per step, ≤{} new tokens, {} worker(s), {} steps per run, {} CPU(s), load {} at start",
        demo.training.prompts_per_step,
        demo.grpo.num_generations,
        demo.grpo.max_new_tokens,
        options.workers,
        options.steps,
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average(),
    );
    let report = bench_loop(&options).await?;
    println!(
        "| mode | max_staleness | s | steps | trained groups/s | sampled groups/s | generated tokens/s | learner busy | sampler busy | mean staleness | dropped stale | mean reward |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let row = |label: &str, stats: &LoopRunStats| {
        println!(
            "| {label} | {} | {:.1} | {} | {:.2} | {:.2} | {:.0} | {:.0}% | {:.0}% | {:.2} | {} | {:.2} |",
            stats.max_staleness,
            stats.wall_s,
            stats.steps,
            stats.groups_per_s(),
            stats.sampled_groups_per_s(),
            stats.tokens_per_s(),
            100.0 * stats.learner_busy(),
            100.0 * stats.sampling_busy(),
            stats.mean_staleness,
            stats.dropped_stale,
            stats.mean_reward,
        );
    };
    for (sync, asynchronous) in report.sync_runs.iter().zip(&report.async_runs) {
        row("sync", sync);
        row("async", asynchronous);
    }
    let (sync, asynchronous) = (report.sync_total(), report.async_total());
    if options.repeats > 1 {
        row("sync (all runs)", &sync);
        row("async (all runs)", &asynchronous);
    }
    println!(
        "async/sync: {:.2}x trained groups/s, {:.2}x generated tokens/s (load {} at the end)",
        report.ratio(),
        if sync.tokens_per_s() > 0.0 {
            asynchronous.tokens_per_s() / sync.tokens_per_s()
        } else {
            0.0
        },
        load_average(),
    );
    println!(
        "trained: groups that reached an optimizer step; sampled and tokens: what the workers produced (groups sampled ahead and dropped included)"
    );
    Ok(())
}
