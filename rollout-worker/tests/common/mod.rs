//! Helpers shared by the integration tests: a scripted tiny model (it answers with a
//! chosen program), a handful of MBPP-style problems on which that program earns
//! different rewards, executor configs with a uid range of their own, and scoring the
//! same code directly to check the rewards the sampler reports.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_executor::{ExecutorConfig, Scorer, proto as xpb, requests};
use tgrpo_policy::{LoadOptions, ModelSource, Policy};
use tgrpo_rollout::testing::{ScriptedModel, write_scripted_model};

/// The program the scripted model writes: one line, every token distinct.
pub const ANSWER: &str = "def f(x): return 1";

/// Pools started by this process so far: each gets its own uids, so pools of tests that
/// share a process (`cargo test` runs them as threads) do not share uids either.
static POOLS: AtomicU32 = AtomicU32::new(0);

/// An executor config whose sandbox uids no other pool uses: 64 uids per test process
/// (picked from the process id, as the executor's own tests do), 8 per pool.
pub fn executor_config(slots: usize) -> ExecutorConfig {
    assert!(slots <= 4, "8 uids per pool hold at most 4 slots");
    let pool = POOLS.fetch_add(1, Ordering::Relaxed) % 8;
    ExecutorConfig {
        slots,
        uid_base: 3_000_000 + (std::process::id() % 100_000) * 64 + pool * 8,
        ..ExecutorConfig::default()
    }
}

/// A local pool of two sandboxes.
pub async fn local_scorer() -> Scorer {
    Scorer::local(executor_config(2))
        .await
        .expect("the sandbox pool starts")
}

/// Writes the scripted model into `dir` and loads it.
pub fn scripted_policy(dir: &Path, sharpness: f32) -> (Policy, ScriptedModel) {
    let scripted = write_scripted_model(dir, ANSWER, sharpness, 5).expect("scripted model");
    let policy = Policy::load(
        &ModelSource::Dir(dir.to_path_buf()),
        &LoadOptions::default(),
    )
    .expect("policy loads");
    (policy, scripted)
}

fn problem(task_id: &str, text: &str, tests: &[&str]) -> Problem {
    Problem {
        task_id: task_id.to_string(),
        text: text.to_string(),
        reference: None,
        tests: tests.iter().map(|test| test.to_string()).collect(),
        setup_code: String::new(),
        format: TestFormat::Mbpp,
        entry_point: Some("f".to_string()),
        prompt: None,
    }
}

/// Problems on which [`ANSWER`] passes every test, none, and half of them.
pub fn problems() -> Vec<Problem> {
    vec![
        problem(
            "ones",
            "Write a function f that always returns 1.",
            &["assert f(3) == 1", "assert f(0) == 1"],
        ),
        problem(
            "identity",
            "Write a function f that returns its argument.",
            &["assert f(3) == 3", "assert f(7) == 7"],
        ),
        problem(
            "half",
            "Write a function f that returns small arguments unchanged.",
            &["assert f(1) == 1", "assert f(2) == 2"],
        ),
    ]
}

/// `count` problems cycling through [`problems`] with distinct task ids.
pub fn many_problems(count: usize) -> Vec<Problem> {
    let base = problems();
    (0..count)
        .map(|index| {
            let mut problem = base[index % base.len()].clone();
            problem.task_id = format!("{}-{index}", problem.task_id);
            problem
        })
        .collect()
}

/// Scores `code` against `problem` directly, without the rollout crate's request builder.
pub async fn score_directly(
    scorer: &Scorer,
    problem: &Problem,
    code: &str,
    kind: xpb::RewardKind,
) -> xpb::ScoreResponse {
    let mut request = requests::mbpp(
        "direct",
        code,
        problem.tests.clone(),
        problem.setup_code.clone(),
    );
    request.reward_kind = kind as i32;
    scorer
        .score(request)
        .await
        .expect("scoring infrastructure works")
}
