//! `cargo bench -p tgrpo-executor`: the same measurement as `tgrpo bench executor`
//! (warm sandbox pool against a fresh python per program, on the MBPP references and a
//! wrong variant of each, 2 slots), runnable without building the whole CLI.
//! Set `TGRPO_BENCH_PROGRAMS` to score only the first N programs.

use tgrpo_executor::ExecutorConfig;
use tgrpo_executor::bench::{BenchOptions, run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` too: only run when benching.
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    let mbpp_dir = tgrpo_executor::mbpp::default_data_dir()
        .ok_or("MBPP data not found: set TGRPO_MBPP_DIR")?;
    let programs = std::env::var("TGRPO_BENCH_PROGRAMS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(BenchOptions {
        mbpp_path: mbpp_dir.join("mbpp.jsonl"),
        slots: 2,
        pool_programs: programs,
        naive_programs: 0,
        executor: ExecutorConfig::default(),
    }))?;
    println!("{report}");
    Ok(())
}
