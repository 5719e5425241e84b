use std::time::Instant;
use tgrpo_executor::{ExecutorConfig, Scorer, mbpp};
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tasks = mbpp::load(&mbpp::default_data_dir().unwrap().join("mbpp.jsonl")).unwrap();
    let scorer = Scorer::local(ExecutorConfig {
        slots: 1,
        uid_base: 7_000_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let reqs: Vec<_> = tasks
        .iter()
        .filter(|t| t.task_id != 123)
        .take(300)
        .map(|t| t.reference_request())
        .collect();
    for r in reqs.iter().take(20) {
        scorer.score(r.clone()).await.unwrap();
    }
    let t = Instant::now();
    let mut job_ms = 0u64;
    for r in &reqs {
        job_ms += scorer.score(r.clone()).await.unwrap().duration_ms;
    }
    let wall = t.elapsed().as_secs_f64() * 1000.0 / reqs.len() as f64;
    println!(
        "sequential 1 slot: wall {wall:.2} ms/program, zygote job window {:.2} ms",
        job_ms as f64 / reqs.len() as f64
    );
}
