//! Rollout throughput of the sampling-and-scoring core: groups/s and generated tokens/s of
//! [`Sampler::run`] (chunked generation on a blocking thread, each chunk scored while the
//! next one generates) next to a sequential baseline measured in the same process (all
//! completions generated in one call, then all scored in one `score_many`), on the same
//! prompts, seeds and sandbox pool. Prints a table and the ratio pipelined / sequential.
//!
//! The model is the scripted tiny model of `tgrpo_rollout::testing` (it writes a real
//! program about half the time at temperature 1, so the executors see real work: passing,
//! failing and non-compiling programs, plus answers without code).
//!
//! ```sh
//! cargo bench -p tgrpo-rollout --features testing --bench rollout
//! TGRPO_BENCH_PROMPTS=16 TGRPO_BENCH_G=8 TGRPO_BENCH_ROUNDS=5 cargo bench -p tgrpo-rollout --features testing --bench rollout
//! ```

use std::time::Instant;

use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_executor::{ExecutorConfig, Scorer};
use tgrpo_policy::{GenerationRequest, LoadOptions, ModelSource, Policy, SamplingParams};
use tgrpo_rollout::testing::write_scripted_model;
use tgrpo_rollout::{
    SampleTask, Sampler, SamplerConfig, SamplingSettings, sample_seed, score_request,
};
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn problems(count: usize) -> Vec<Problem> {
    (0..count)
        .map(|index| Problem {
            task_id: format!("bench-{index}"),
            text: "Write a function f that always returns 1.".to_string(),
            reference: None,
            tests: vec![
                "assert f(3) == 1".to_string(),
                format!("assert f({index}) == 1"),
            ],
            setup_code: String::new(),
            format: TestFormat::Mbpp,
            entry_point: Some("f".to_string()),
            prompt: None,
        })
        .collect()
}

/// The baseline: generate every completion in one call, then score them all.
async fn sequential(
    policy: &Policy,
    scorer: &Scorer,
    tasks: &[SampleTask],
    settings: &SamplingSettings,
) -> (usize, usize) {
    let sampler = Sampler::new(policy.clone(), scorer.clone(), SamplerConfig::default()).unwrap();
    let mut requests = Vec::new();
    let mut owners = Vec::new();
    for task in tasks {
        let prompt = sampler.prompt_tokens(&task.problem).unwrap();
        for index in 0..settings.num_samples {
            requests.push(GenerationRequest {
                prompt: prompt.clone(),
                params: SamplingParams {
                    temperature: settings.temperature,
                    max_new_tokens: settings.max_new_tokens,
                    seed: sample_seed(settings.seed, &task.key, index),
                    ..SamplingParams::default()
                },
            });
            owners.push(task);
        }
    }
    let generator = policy.clone();
    let generations = tokio::task::spawn_blocking(move || generator.generate(&requests).unwrap().1)
        .await
        .unwrap();
    let tokens = generations.iter().map(|g| g.tokens.len()).sum();
    let scoring = SamplerConfig::default().scoring;
    let score_requests: Vec<_> = generations
        .iter()
        .zip(&owners)
        .enumerate()
        .filter_map(|(index, (generation, task))| {
            tgrpo_dataset::extract::python_code(&generation.text, Some("f"))
                .map(|code| score_request(format!("{index}"), &task.problem, &code, &scoring))
        })
        .collect();
    scorer.score_many(score_requests).await.unwrap();
    (tasks.len(), tokens)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let prompts = env_usize("TGRPO_BENCH_PROMPTS", 8);
    let group = env_usize("TGRPO_BENCH_G", 4);
    let rounds = env_usize("TGRPO_BENCH_ROUNDS", 5);
    let chunk = env_usize("TGRPO_BENCH_MAX_BATCH", 8);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        write_scripted_model(dir.path(), "def f(x): return 1", 8.5, 5).unwrap();
        let policy = Policy::load(&ModelSource::Dir(dir.path().to_path_buf()), &LoadOptions::default()).unwrap();
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        let scorer = Scorer::local(ExecutorConfig {
            slots,
            uid_base: 3_000_000 + (std::process::id() % 100_000) * 64,
            ..ExecutorConfig::default()
        })
        .await
        .unwrap();
        let sampler = Sampler::new(
            policy.clone(),
            scorer.clone(),
            SamplerConfig {
                max_batch_sequences: chunk,
                ..SamplerConfig::default()
            },
        )
        .unwrap();
        let tasks: Vec<SampleTask> = problems(prompts)
            .into_iter()
            .map(|problem| SampleTask {
                key: problem.task_id.clone(),
                problem,
            })
            .collect();
        let cancel = CancellationToken::new();
        let (mut pipelined_rates, mut sequential_rates, mut token_rates) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..=rounds {
            let settings = SamplingSettings {
                num_samples: group,
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: 32,
                stop: Vec::new(),
                seed: round as u64,
            };
            let started = Instant::now();
            let batch = sampler.run(tasks.clone(), &settings, &cancel).await.unwrap();
            let pipelined_s = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let (groups, _) = sequential(&policy, &scorer, &tasks, &settings).await;
            let sequential_s = started.elapsed().as_secs_f64();
            if round == 0 {
                continue; // warm-up: page in the model, fork the zygotes' first children
            }
            pipelined_rates.push(batch.tasks.len() as f64 / pipelined_s);
            sequential_rates.push(groups as f64 / sequential_s);
            token_rates.push(batch.stats.generated_tokens as f64 / pipelined_s);
        }
        let pipelined = median(&mut pipelined_rates);
        let baseline = median(&mut sequential_rates);
        println!("rollout throughput: {prompts} prompts x G={group}, max 32 new tokens, max batch {chunk}, {slots} sandbox slots, median of {rounds} rounds");
        println!("{:<34}{:>12}{:>14}", "", "groups/s", "tokens/s");
        println!("{:<34}{:>12.1}{:>14.0}", "Sampler::run (pipelined)", pipelined, median(&mut token_rates));
        println!("{:<34}{:>12.1}{:>14}", "generate all, then score all", baseline, "-");
        println!("ratio pipelined / sequential: {:.2}", pipelined / baseline);
    });
}
