//! Helpers shared by the pipeline's integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use tgrpo_executor::ExecutorConfig;
use tgrpo_pipeline::config::TgrpoConfig;

/// A sandbox pool config whose uids no other pool uses: 64 uids per test process (from
/// the process id, in a range of the pipeline's own), 8 per pool.
pub fn executor_config() -> ExecutorConfig {
    static POOLS: AtomicU32 = AtomicU32::new(0);
    let pool = POOLS.fetch_add(1, Ordering::Relaxed) % 8;
    ExecutorConfig {
        slots: 2,
        uid_base: 60_000_000 + (std::process::id() % 100_000) * 64 + pool * 8,
        ..ExecutorConfig::default()
    }
}

/// The demo's config moved under `dir` (outputs, data, traces, cache), with a private
/// sandbox pool.
pub fn demo_config(dir: &Path) -> TgrpoConfig {
    let mut config = tgrpo_pipeline::demo::config();
    config.output_dir = dir.join("outputs");
    config.data.output_dir = dir.join("data");
    config.teacher.cache_dir = Some(dir.join("data/teacher_cache"));
    config.teacher.traces_path = dir.join("data/synthetic_traces.jsonl");
    config.executor = executor_config();
    config.sync_derived_and_paths();
    config
}
