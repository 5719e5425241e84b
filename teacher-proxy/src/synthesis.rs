//! The synthesis stage: N verified teacher traces per training problem, written to a
//! traces file that resumes.
//!
//! Only the (problem, sample) pairs missing from the traces file are requested; answers
//! already paid for come from the response cache. Records are appended as they complete
//! (in completion order, not problem order), so cancelling (SIGINT, a dropped future) at
//! any moment loses at most the requests in flight, and their answers, if they had
//! arrived, are in the cache already.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tgrpo_dataset::Problem;
use tokio_util::sync::CancellationToken;

use crate::client::Teacher;
use crate::error::{Result, TeacherError};
use crate::source::TraceSource;
use crate::traces::TraceWriter;
use crate::verify::Verifier;

/// A sample that produced no trace this run (it will be asked again by the next run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleFailure {
    /// The problem's task id.
    pub problem_id: String,
    /// Which sample.
    pub sample_index: u32,
    /// Why, with the endpoint and status.
    pub error: String,
}

/// What a synthesis run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthesisSummary {
    /// Problems given.
    pub problems: usize,
    /// Samples wanted in all (problems × samples per problem).
    pub samples_wanted: usize,
    /// Of those, already in the traces file when the run started.
    pub already_done: usize,
    /// Traces written this run.
    pub written: usize,
    /// Of those, served from the response cache.
    pub from_cache: u64,
    /// Of those, passing their tests.
    pub passed: usize,
    /// Samples that failed this run.
    pub failures: Vec<SampleFailure>,
    /// Records in the traces file after the run.
    pub records_total: usize,
    /// Of those, passing.
    pub passed_total: usize,
    /// HTTP requests sent to the teacher, retries included.
    pub teacher_requests: u64,
    /// Of those, retries.
    pub retries: u64,
    /// Prompt tokens the teacher processed this run.
    pub prompt_tokens: u64,
    /// Completion tokens the teacher generated this run.
    pub completion_tokens: u64,
    /// The run stopped early (cancelled); rerun to finish.
    pub cancelled: bool,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl SynthesisSummary {
    /// Fraction of the traces file's records that pass their tests.
    pub fn pass_rate(&self) -> f64 {
        if self.records_total == 0 {
            return 0.0;
        }
        self.passed_total as f64 / self.records_total as f64
    }

    /// Every wanted sample is in the traces file.
    pub fn is_complete(&self) -> bool {
        self.already_done + self.written == self.samples_wanted
    }
}

impl fmt::Display for SynthesisSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "samples: {} wanted for {} problems, {} already done, {} written this run ({} from cache), {} failed{}",
            self.samples_wanted,
            self.problems,
            self.already_done,
            self.written,
            self.from_cache,
            self.failures.len(),
            if self.cancelled { ", CANCELLED" } else { "" },
        )?;
        writeln!(
            f,
            "pass rate: {:.1}% ({} of {} traces pass their tests; {} of {} this run)",
            100.0 * self.pass_rate(),
            self.passed_total,
            self.records_total,
            self.passed,
            self.written,
        )?;
        write!(
            f,
            "teacher: {} requests, {} retries, {} prompt + {} completion tokens, {:.1}s",
            self.teacher_requests,
            self.retries,
            self.prompt_tokens,
            self.completion_tokens,
            self.elapsed.as_secs_f64(),
        )
    }
}

/// Runs the synthesis stage: `samples_per_problem` traces for each problem, appended to
/// `traces_path`. Returns when every pair is done or failed, or when `cancel` fires (then
/// with `cancelled: true`). Errors are only those that stop the whole run (the traces file
/// cannot be read or written, duplicate problem ids); per-sample failures are in the
/// summary.
pub async fn synthesize<T: Teacher, V: Verifier>(
    source: &TraceSource<T, V>,
    problems: &[Problem],
    samples_per_problem: u32,
    traces_path: &Path,
    show_progress: bool,
    cancel: &CancellationToken,
) -> Result<SynthesisSummary> {
    let started = Instant::now();
    let mut seen = HashSet::new();
    if let Some(duplicate) = problems.iter().find(|p| !seen.insert(p.task_id.as_str())) {
        return Err(TeacherError::DuplicateProblem {
            problem_id: duplicate.task_id.clone(),
        });
    }
    let mut writer = TraceWriter::open(traces_path)?;
    let pending: Vec<(&Problem, u32)> = problems
        .iter()
        .flat_map(|problem| (0..samples_per_problem).map(move |sample| (problem, sample)))
        .filter(|(problem, sample)| !writer.contains(&problem.task_id, *sample))
        .collect();
    let samples_wanted = problems.len() * samples_per_problem as usize;
    let already_done = samples_wanted - pending.len();
    tracing::info!(
        problems = problems.len(),
        samples_wanted,
        already_done,
        to_request = pending.len(),
        traces = %traces_path.display(),
        teacher = %source.teacher().describe(),
        "synthesis starting"
    );

    let progress = progress_bar(pending.len() as u64, show_progress);
    let meter_before = source.meter();
    let width = source.config().max_concurrent_requests.saturating_mul(2);
    let mut results =
        futures::stream::iter(pending)
            .map(|(problem, sample)| async move {
                (problem, sample, source.trace(problem, sample).await)
            })
            .buffer_unordered(width);

    let mut written = 0;
    let mut passed = 0;
    let mut from_cache = 0;
    let mut failures = Vec::new();
    let mut cancelled = false;
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                cancelled = true;
                break;
            }
            next = results.next() => next,
        };
        let Some((problem, sample, result)) = next else {
            break;
        };
        match result {
            Ok(outcome) => {
                writer.append(&outcome.record)?;
                written += 1;
                passed += usize::from(outcome.record.passed);
                from_cache += u64::from(outcome.from_cache);
            }
            Err(err) => {
                tracing::warn!(%err, "sample failed; a rerun will ask again");
                failures.push(SampleFailure {
                    problem_id: problem.task_id.clone(),
                    sample_index: sample,
                    error: err.to_string(),
                });
            }
        }
        progress.inc(1);
        progress.set_message(format!(
            "pass {:.0}%, {} failed",
            100.0 * passed as f64 / written.max(1) as f64,
            failures.len()
        ));
    }
    // Dropping the stream aborts what is still in flight (and releases its borrows).
    drop(results);
    progress.finish_and_clear();
    writer.sync()?;

    let meter = source.meter().since(&meter_before);
    let existing_passed = writer.existing().iter().filter(|r| r.passed).count();
    let summary = SynthesisSummary {
        problems: problems.len(),
        samples_wanted,
        already_done,
        written,
        from_cache,
        passed,
        failures,
        records_total: writer.existing().len() + written,
        passed_total: existing_passed + passed,
        teacher_requests: meter.teacher_requests,
        retries: meter.retries,
        prompt_tokens: meter.prompt_tokens,
        completion_tokens: meter.completion_tokens,
        cancelled,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        written = summary.written,
        failed = summary.failures.len(),
        pass_rate = summary.pass_rate(),
        cancelled,
        "synthesis finished"
    );
    Ok(summary)
}

fn progress_bar(len: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "synthesis [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}
