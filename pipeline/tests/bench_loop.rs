//! The loop benchmark measures what it says: the synchronous mode really is synchronous
//! (every trained group was sampled with the adapter it is trained against, none dropped),
//! the asynchronous mode samples ahead within its staleness bound, and both train the
//! steps asked for on the demo's run. No timing is asserted.

use tgrpo_pipeline::bench_loop::{LoopBenchOptions, bench_loop};

mod common;
use common::demo_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_trains_fresh_groups_and_async_mode_samples_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let base = demo_config(dir.path());
    let prompts_per_step = base.training.prompts_per_step as u64;
    let options = LoopBenchOptions {
        steps: 3,
        async_staleness: 2,
        workers: 1,
        repeats: 1,
        work_dir: dir.path().join("bench"),
        base: Some(base),
    };
    let report = bench_loop(&options).await.unwrap();
    assert_eq!(report.sync_runs.len(), 1);
    assert_eq!(report.async_runs.len(), 1);

    let sync = &report.sync_runs[0];
    assert_eq!(sync.max_staleness, 0);
    assert_eq!(sync.steps, 3);
    assert_eq!(sync.groups_trained, 3 * prompts_per_step);
    assert_eq!(sync.dropped_stale, 0, "{sync:?}");
    assert_eq!(sync.mean_staleness, 0.0, "{sync:?}");
    // Lockstep: at most the batch leased while the last step was saved is sampled
    // beyond what is trained.
    assert!(sync.groups_sampled >= sync.groups_trained, "{sync:?}");
    assert!(
        sync.groups_sampled <= sync.groups_trained + prompts_per_step,
        "{sync:?}"
    );
    assert!(sync.generated_tokens > 0 && sync.wall_s > 0.0, "{sync:?}");

    let ahead = &report.async_runs[0];
    assert_eq!(ahead.max_staleness, 2);
    assert_eq!(ahead.steps, 3);
    assert_eq!(ahead.groups_trained, 3 * prompts_per_step);
    assert!(ahead.mean_staleness <= 2.0, "{ahead:?}");
    assert!(ahead.groups_sampled >= ahead.groups_trained, "{ahead:?}");
    assert!(report.ratio() > 0.0);

    // Every run wrote its own outputs; the shared data and traces were prepared once.
    assert!(
        dir.path()
            .join("bench/run-0-staleness-0/metrics.jsonl")
            .is_file()
    );
    assert!(
        dir.path()
            .join("bench/run-0-staleness-2/final_model")
            .is_dir()
    );
    assert!(
        dir.path()
            .join("bench/data/synthetic_traces.jsonl")
            .is_file()
    );
}
