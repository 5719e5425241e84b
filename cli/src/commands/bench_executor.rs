//! `tgrpo bench executor`: the executor's warm sandbox pool against a fresh python per
//! program, on the MBPP references and a wrong variant of each, in the same process.

use std::path::PathBuf;

use clap::Args;

use super::sandbox_args::SandboxArgs;

/// Options of `tgrpo bench executor`.
#[derive(Debug, Args)]
pub struct ExecutorBenchArgs {
    /// The MBPP release (mbpp.jsonl); default: $TGRPO_MBPP_DIR/mbpp.jsonl or the
    /// shared data directory next to the repository.
    #[arg(long, env = "TGRPO_MBPP_JSONL")]
    pub mbpp: Option<PathBuf>,

    /// Programs the pool scores (references and wrong variants); 0 = all 1948.
    #[arg(long, default_value_t = 0)]
    pub programs: usize,

    /// Programs the naive runner scores, from the start of the same list; 0 = the same
    /// programs as the pool (a fair comparison: some MBPP programs compute for seconds).
    #[arg(long, default_value_t = 0)]
    pub naive_programs: usize,

    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Runs the benchmark and prints programs/s of both runners and their ratio.
pub async fn run(args: ExecutorBenchArgs) -> anyhow::Result<()> {
    let mbpp_path = match args.mbpp {
        Some(path) => path,
        None => tgrpo_executor::mbpp::default_data_dir()
            .map(|dir| dir.join("mbpp.jsonl"))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "MBPP data not found: pass --mbpp PATH/mbpp.jsonl or set TGRPO_MBPP_DIR"
                )
            })?,
    };
    let mut executor = args.sandbox.to_config();
    // The target is stated for 2 slots: benchmark that unless told otherwise.
    let slots = if args.sandbox.slots == 0 {
        2
    } else {
        args.sandbox.slots
    };
    executor.slots = slots;
    executor.validate()?;
    let report = tgrpo_executor::bench::run(tgrpo_executor::bench::BenchOptions {
        mbpp_path,
        slots,
        pool_programs: args.programs,
        naive_programs: args.naive_programs,
        executor,
    })
    .await?;
    println!("{report}");
    Ok(())
}
