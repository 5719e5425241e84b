//! `tgrpo bench executor`: programs per second of the warm sandbox pool against a naive
//! runner that starts a fresh `python3` per program (what a harness without a pool
//! does), measured in the same process on the same programs: the MBPP references and a
//! wrong variant of each.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tgrpo_proto::executor::{ScoreRequest, Verdict};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::config::ExecutorConfig;
use crate::error::ExecutorError;
use crate::mbpp;
use crate::scorer::Scorer;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `mbpp.jsonl`.
    pub mbpp_path: PathBuf,
    /// Slots of the pool, and processes the naive runner keeps running at once.
    pub slots: usize,
    /// How many of the programs (references and wrong variants, interleaved) the pool
    /// scores; 0 means all.
    pub pool_programs: usize,
    /// How many programs the naive runner scores; 0 means as many as the pool.
    pub naive_programs: usize,
    /// Executor settings for the pool (its `slots` is replaced by `slots` above).
    pub executor: ExecutorConfig,
}

/// One runner's measurement.
#[derive(Debug, Clone, Copy)]
pub struct RunnerResult {
    /// Programs scored.
    pub programs: usize,
    /// Of which passed.
    pub passed: usize,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// CPU time of every process involved (this process, fork-servers, sandboxes or
    /// interpreters): unlike the rate, it hardly depends on what else the machine runs.
    pub cpu: Duration,
    /// Of `cpu`, the part spent in this process (the worker: queueing, wire formats,
    /// bookkeeping) rather than in python processes.
    pub worker_cpu: Duration,
}

impl RunnerResult {
    /// Programs per second.
    pub fn rate(&self) -> f64 {
        self.programs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU milliseconds per program.
    pub fn cpu_ms_per_program(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.programs.max(1) as f64
    }
}

/// Both measurements.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The warm pool.
    pub pool: RunnerResult,
    /// A fresh python per program.
    pub naive: RunnerResult,
    /// Slots used by both.
    pub slots: usize,
    /// Whether the pool ran sandboxed.
    pub sandboxed: bool,
}

impl BenchReport {
    /// Pool throughput over naive throughput.
    pub fn ratio(&self) -> f64 {
        self.pool.rate() / self.naive.rate().max(1e-9)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "executor benchmark: {} slots, {}",
            self.slots,
            if self.sandboxed {
                "sandboxed"
            } else {
                "UNSANDBOXED"
            }
        )?;
        writeln!(
            f,
            "  pool : {:>5} programs ({:>4} passed) in {:>7.2} s = {:>7.1} programs/s, {:>5.2} ms CPU/program ({:.2} in the worker)",
            self.pool.programs,
            self.pool.passed,
            self.pool.elapsed.as_secs_f64(),
            self.pool.rate(),
            self.pool.cpu_ms_per_program(),
            self.pool.worker_cpu.as_secs_f64() * 1000.0 / self.pool.programs.max(1) as f64
        )?;
        writeln!(
            f,
            "  naive: {:>5} programs ({:>4} passed) in {:>7.2} s = {:>7.1} programs/s, {:>5.2} ms CPU/program (fresh `python3 -I` per program, no sandbox)",
            self.naive.programs,
            self.naive.passed,
            self.naive.elapsed.as_secs_f64(),
            self.naive.rate(),
            self.naive.cpu_ms_per_program()
        )?;
        write!(
            f,
            "  ratio: {:.2}x programs/s ({:.2}x CPU per program)",
            self.ratio(),
            self.naive.cpu_ms_per_program() / self.pool.cpu_ms_per_program().max(1e-9)
        )
    }
}

/// The programs: reference and wrong variant of each task, interleaved.
fn programs(tasks: &[mbpp::MbppTask]) -> Vec<ScoreRequest> {
    tasks
        .iter()
        .flat_map(|task| [task.reference_request(), task.wrong_request()])
        .collect()
}

/// Runs both measurements.
pub async fn run(options: BenchOptions) -> Result<BenchReport, ExecutorError> {
    let tasks = mbpp::load(&options.mbpp_path)?;
    let all = programs(&tasks);
    let take = |count: usize| {
        let count = if count == 0 {
            all.len()
        } else {
            count.min(all.len())
        };
        all[..count].to_vec()
    };
    let slots = options.slots.max(1);
    let executor = ExecutorConfig {
        slots,
        ..options.executor.clone()
    };
    let scorer = Scorer::local(executor.clone()).await?;
    let sandboxed = scorer.isolation().is_some_and(|report| report.sandboxed);

    // Warm-up: the first executions fault in the fork-servers' pages.
    scorer.score_many(take(slots * 4)).await?;

    let pool_programs = take(options.pool_programs);
    let own_before = own_cpu();
    let sandbox_before = sandbox_cpu(&scorer);
    let started = Instant::now();
    let responses = scorer.score_many(pool_programs).await?;
    let elapsed = started.elapsed();
    let worker_cpu = own_cpu().saturating_sub(own_before);
    let cpu = worker_cpu + sandbox_cpu(&scorer).saturating_sub(sandbox_before);
    let pool = RunnerResult {
        programs: responses.len(),
        passed: responses
            .iter()
            .filter(|response| response.verdict() == Verdict::Passed)
            .count(),
        elapsed,
        cpu,
        worker_cpu,
    };
    scorer.close().await;

    let naive_count = if options.naive_programs == 0 {
        options.pool_programs
    } else {
        options.naive_programs
    };
    let naive_programs = take(naive_count);
    let naive = run_naive(
        &executor.python,
        &naive_programs,
        slots,
        executor.default_timeout(),
    )
    .await?;
    Ok(BenchReport {
        pool,
        naive,
        slots,
        sandboxed,
    })
}

/// The baseline: each program with its tests as one script, run by a new interpreter;
/// it passes when the script exits 0.
pub async fn run_naive(
    python: &Path,
    requests: &[ScoreRequest],
    concurrency: usize,
    timeout: Duration,
) -> Result<RunnerResult, ExecutorError> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let own_before = own_cpu();
    let cpu_before = own_before + reaped_children_cpu();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for request in requests {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|_| ExecutorError::PoolClosed)?;
        let script = format!(
            "{}\n{}\n{}\n",
            request.code,
            request.setup_code,
            request.tests.join("\n")
        );
        let python = python.to_path_buf();
        tasks.spawn(async move {
            let _permit = permit;
            run_script(&python, &script, timeout).await
        });
    }
    let mut passed = 0;
    while let Some(result) = tasks.join_next().await {
        if result.map_err(|err| ExecutorError::Slot {
            slot: 0,
            reason: err.to_string(),
        })?? {
            passed += 1;
        }
    }
    let elapsed = started.elapsed();
    let worker_cpu = own_cpu().saturating_sub(own_before);
    let cpu = (own_cpu() + reaped_children_cpu()).saturating_sub(cpu_before);
    Ok(RunnerResult {
        programs: requests.len(),
        passed,
        elapsed,
        cpu,
        worker_cpu,
    })
}

/// CPU time of this process (all threads).
fn own_cpu() -> Duration {
    crate::sandbox::process_cpu_time(std::process::id(), false).unwrap_or_default()
}

/// CPU time of this process's children that have been reaped (the naive runner's
/// interpreters).
fn reaped_children_cpu() -> Duration {
    let with = crate::sandbox::process_cpu_time(std::process::id(), true).unwrap_or_default();
    with.saturating_sub(own_cpu())
}

/// CPU time of the pool's fork-servers and their executions.
fn sandbox_cpu(scorer: &Scorer) -> Duration {
    scorer
        .pool()
        .map(|pool| pool.sandbox_cpu_time())
        .unwrap_or_default()
}

async fn run_script(python: &Path, script: &str, timeout: Duration) -> Result<bool, ExecutorError> {
    let mut child = tokio::process::Command::new(python)
        .args(["-I", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecutorError::Spawn {
            python: python.to_path_buf(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits before reading its script is simply a failure.
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(status.success()),
        Ok(Err(_)) => Ok(false),
        Err(_) => {
            let _ = child.kill().await;
            Ok(false)
        }
    }
}
