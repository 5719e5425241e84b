//! `tgrpo bench ...`: benchmarks that print a ratio against a baseline measured in the
//! same process (performance is measured here, never in timed tests). One module per
//! target: `bench_broadcast`, `bench_executor`, `bench_learner`.

use clap::Subcommand;

use super::{bench_broadcast, bench_executor, bench_learner};

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
}

/// Runs the chosen benchmark and prints its report.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Broadcast(args) => bench_broadcast::run(args).await,
        BenchCommand::Executor(args) => bench_executor::run(args).await,
        BenchCommand::Learner(args) => bench_learner::run(args).await,
    }
}
