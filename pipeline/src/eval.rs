//! The eval stage: n samples per problem, scored by the executor, unbiased pass@k.
//!
//! Sampling and scoring are the rollout crate's [`Sampler`] — the very code that computes
//! training rewards — so a pass@k number and a training reward mean the same thing. The
//! model is the base model, or the base model with a PEFT adapter (`--adapter DIR`, e.g.
//! `outputs/final_model`).
//!
//! Output: a JSON file with `pass_at_k` (keys `"1"`, `"5"`, … for each k ≤ n),
//! `num_tasks`, `num_samples_per_task`, the settings, throughput, and per task its id, n,
//! the number correct, and one sample's verdict and detail (the first failing one, or the
//! first passing one when all pass). An SVG of pass@k is written next to it.
//!
//! Resuming: results are appended per task to `<output>.partial.jsonl` as chunks of tasks
//! finish; a rerun with the same settings skips the tasks in it, and a finished output
//! file with the same settings makes the stage a no-op.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tgrpo_dataset::Problem;
use tgrpo_executor::Scorer;
use tgrpo_executor::proto::Verdict;
use tgrpo_policy::LoraAdapter;
use tgrpo_rollout::{SampleTask, Sampler, SamplerConfig, SamplingSettings, TaskSamples};

use crate::config::{EvalDataset, TgrpoConfig};
use crate::error::{PipelineError, Result};
use crate::model::{load_policy, resolve_model};
use crate::passk::mean_pass_at_k;
use crate::progress;
use crate::train::StageOptions;

/// Longest code kept per task in the results (the rest is cut).
const MAX_CODE_CHARS: usize = 2000;

/// What to evaluate and how: the `[evaluation]` section resolved against the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// The model spec (HF dir, GGUF, hub id).
    pub model: String,
    /// A PEFT adapter directory on top of the model.
    pub adapter: Option<PathBuf>,
    /// The problems' format.
    pub dataset: EvalDataset,
    /// The problems.
    pub data_path: PathBuf,
    /// First N problems only (0 = all).
    pub limit: usize,
    /// Samples per problem.
    pub num_samples: usize,
    /// The k of pass@k (each ≤ n).
    pub k: Vec<usize>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Longest answer.
    pub max_new_tokens: usize,
    /// Run seed of the sampling streams.
    pub seed: u64,
    /// The results file.
    pub output: PathBuf,
}

impl EvalSettings {
    /// The settings `config` describes (the demo model is built when needed), with the
    /// adapter `config.evaluation.adapter`.
    pub fn from_config(config: &TgrpoConfig) -> Result<Self> {
        config.evaluation.validate()?;
        let evaluation = &config.evaluation;
        Ok(Self {
            model: resolve_model(config)?,
            adapter: evaluation.adapter.clone(),
            dataset: evaluation.dataset,
            data_path: config.evaluation_data_path(),
            limit: evaluation.limit,
            num_samples: evaluation.num_samples,
            k: evaluation.sorted_k(),
            temperature: evaluation.temperature,
            top_p: evaluation.top_p,
            max_new_tokens: evaluation.max_new_tokens,
            seed: evaluation.seed,
            output: config.evaluation_output(),
        })
    }

    /// What must match for earlier results to be reused (all but the output path).
    fn fingerprint(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("settings serialize");
        if let Some(object) = value.as_object_mut() {
            object.remove("output");
        }
        value
    }
}

/// One sample shown in the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleDetail {
    /// Its index among the task's samples.
    pub index: usize,
    /// `passed`, `failed`, `timeout` or `error`.
    pub verdict: String,
    /// Tests passed of tests run.
    pub tests_passed: u32,
    /// Tests run.
    pub tests_total: u32,
    /// Why the verdict (first failing test, exception, "no code").
    pub detail: String,
    /// Why generation stopped: `eos`, `stop` or `length`.
    pub finish_reason: String,
    /// The extracted program (cut at 2000 characters), when there was one.
    pub code: Option<String>,
}

/// The results of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The problem's task id.
    pub task_id: String,
    /// Samples drawn.
    pub n: usize,
    /// Samples that passed every test.
    pub correct: usize,
    /// One sample: the first failing one, or the first passing one when all pass.
    pub sample: Option<SampleDetail>,
    /// Why the task was not sampled (its prompt does not fit the model's context).
    pub skipped: Option<String>,
}

/// The eval stage's output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    /// Mean unbiased pass@k over the sampled tasks, keyed by k as text.
    pub pass_at_k: BTreeMap<String, f64>,
    /// Tasks evaluated (skipped ones excluded).
    pub num_tasks: usize,
    /// n.
    pub num_samples_per_task: usize,
    /// Tasks skipped (prompt too long for the model).
    pub num_skipped: usize,
    /// The settings the numbers came from.
    pub settings: EvalSettings,
    /// Seconds of sampling and scoring in the run that finished the file (model loading
    /// excluded: it is `load_s`).
    pub wall_s: f64,
    /// Seconds that run spent loading the model (and adapter) and starting the scorer;
    /// a real model takes seconds to load, which would otherwise dilute the throughput.
    #[serde(default)]
    pub load_s: f64,
    /// Tokens generated in that run (all samples, prompt tokens excluded).
    #[serde(default)]
    pub generated_tokens: usize,
    /// Samples generated and scored per second in that run.
    pub samples_per_s: f64,
    /// Tokens generated per second in that run.
    pub tokens_per_s: f64,
    /// Per task, in problem order.
    pub tasks: Vec<TaskResult>,
}

impl EvalResults {
    /// pass@k as `(k, value)` pairs in k order.
    pub fn pass_at_k_by_k(&self) -> BTreeMap<usize, f64> {
        self.pass_at_k
            .iter()
            .filter_map(|(k, value)| Some((k.parse().ok()?, *value)))
            .collect()
    }

    /// One line: `pass@1 0.123 · pass@5 0.456`.
    pub fn pass_at_k_line(&self) -> String {
        self.pass_at_k_by_k()
            .iter()
            .map(|(k, value)| format!("pass@{k} {value:.3}"))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// A line of the partial-results file: the settings first, then one task per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum PartialLine {
    Settings { settings: serde_json::Value },
    Task(TaskResult),
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Timeout => "timeout",
        Verdict::Error => "error",
        Verdict::Unspecified => "unspecified",
    }
}

fn task_result(samples: &TaskSamples) -> TaskResult {
    let correct = samples
        .samples
        .iter()
        .filter(|sample| sample.passed())
        .count();
    let shown = samples
        .samples
        .iter()
        .find(|sample| !sample.passed())
        .or_else(|| samples.samples.first());
    TaskResult {
        task_id: samples.task_id.clone(),
        n: samples.samples.len(),
        correct,
        sample: shown.map(|sample| SampleDetail {
            index: sample.index,
            verdict: verdict_name(sample.verdict).to_string(),
            tests_passed: sample.tests_passed,
            tests_total: sample.tests_total,
            detail: sample.detail.clone(),
            finish_reason: sample.finish_reason.as_str().to_string(),
            code: sample
                .code
                .as_ref()
                .map(|code| code.chars().take(MAX_CODE_CHARS).collect()),
        }),
        skipped: samples.skipped.clone(),
    }
}

/// Mean pass@k over `tasks` (skipped ones excluded) for each k.
pub fn pass_at_k_of(tasks: &[TaskResult], ks: &[usize]) -> BTreeMap<String, f64> {
    let counts: Vec<(usize, usize)> = tasks
        .iter()
        .filter(|task| task.skipped.is_none() && task.n > 0)
        .map(|task| (task.n, task.correct))
        .collect();
    ks.iter()
        .filter_map(|&k| Some((k.to_string(), mean_pass_at_k(&counts, k)?)))
        .collect()
}

/// Loads the problems of `settings` (format, file, limit).
pub fn load_problems(settings: &EvalSettings) -> Result<Vec<Problem>> {
    let mut problems = match settings.dataset {
        EvalDataset::Mbpp => tgrpo_dataset::mbpp::load_jsonl(&settings.data_path)?,
        EvalDataset::Humaneval => tgrpo_dataset::humaneval::load_jsonl(&settings.data_path)?,
    };
    if settings.limit > 0 {
        problems.truncate(settings.limit);
    }
    if problems.is_empty() {
        return Err(PipelineError::stage(
            "eval",
            format!("{} holds no problems", settings.data_path.display()),
        ));
    }
    Ok(problems)
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial.jsonl");
    PathBuf::from(name)
}

/// Tasks already evaluated with the same settings (from the partial file).
fn read_partial(path: &Path, fingerprint: &serde_json::Value) -> Vec<TaskResult> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    match lines
        .next()
        .and_then(|line| serde_json::from_str::<PartialLine>(line).ok())
    {
        Some(PartialLine::Settings { settings }) if &settings == fingerprint => {}
        _ => return Vec::new(),
    }
    // A torn last line (a killed run) is skipped: that task is redone.
    lines
        .filter_map(|line| match serde_json::from_str::<PartialLine>(line) {
            Ok(PartialLine::Task(task)) => Some(task),
            _ => None,
        })
        .collect()
}

fn append_lines(path: &Path, lines: &[PartialLine]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| PipelineError::io(path, err))?;
    let mut text = String::new();
    for line in lines {
        text.push_str(&serde_json::to_string(line).expect("a line serializes"));
        text.push('\n');
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|err| PipelineError::io(path, err))
}

/// Runs the eval stage (see the module docs). `config` supplies the device, dtype, the
/// executors (`rollout.executor_endpoints`, else an in-process `[executor]` pool) and the
/// sampler's batch size; `settings` what to evaluate.
pub async fn evaluate(
    config: &TgrpoConfig,
    settings: &EvalSettings,
    options: &StageOptions,
) -> Result<EvalResults> {
    if settings.num_samples == 0
        || settings
            .k
            .iter()
            .any(|&k| k == 0 || k > settings.num_samples)
    {
        return Err(PipelineError::stage(
            "eval",
            format!(
                "every k must be within 1..=n (n = {}, k = {:?})",
                settings.num_samples, settings.k
            ),
        ));
    }
    let fingerprint = settings.fingerprint();
    if let Ok(text) = std::fs::read_to_string(&settings.output)
        && let Ok(results) = serde_json::from_str::<EvalResults>(&text)
        && results.settings.fingerprint() == fingerprint
    {
        tracing::info!(output = %settings.output.display(), "already evaluated with these settings");
        return Ok(results);
    }
    let problems = load_problems(settings)?;
    let partial = partial_path(&settings.output);
    if let Some(parent) = partial.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|err| PipelineError::io(parent, err))?;
    }
    let mut done: BTreeMap<String, TaskResult> = read_partial(&partial, &fingerprint)
        .into_iter()
        .map(|task| (task.task_id.clone(), task))
        .collect();
    if done.is_empty() {
        std::fs::write(&partial, "").map_err(|err| PipelineError::io(&partial, err))?;
        append_lines(
            &partial,
            &[PartialLine::Settings {
                settings: fingerprint.clone(),
            }],
        )?;
    }
    let pending: Vec<Problem> = problems
        .iter()
        .filter(|problem| !done.contains_key(&problem.task_id))
        .cloned()
        .collect();

    let load_started = Instant::now();
    let mut load_s = 0.0;
    let mut started = Instant::now();
    let mut generated_tokens = 0usize;
    let mut generated_samples = 0usize;
    if !pending.is_empty() {
        let policy = load_policy(config, &settings.model).await?;
        if let Some(dir) = &settings.adapter {
            let model_config = policy.model().config().clone();
            let device = policy.model().device().clone();
            let dtype = policy.model().dtype();
            let dir = dir.clone();
            let (adapter, _base) = tokio::task::spawn_blocking(move || {
                LoraAdapter::load_peft(&dir, &model_config, &device, dtype)
            })
            .await
            .map_err(|join| {
                PipelineError::stage("eval", format!("adapter loading failed: {join}"))
            })??;
            policy
                .adapter_slot()
                .set(Some((0, std::sync::Arc::new(adapter))));
        }
        let scorer = if config.rollout.executor_endpoints.is_empty() {
            Scorer::local(config.executor.clone()).await?
        } else {
            Scorer::remote(
                &config.rollout.executor_endpoints,
                config.rollout.executor_client.clone(),
            )?
        };
        let sampler_config = SamplerConfig {
            // Evaluation answers every problem: a scoring outage is retried a while, then
            // fails the stage (a rerun resumes) rather than hanging forever.
            score_attempts: 10,
            ..config.rollout.sampler_config()
        };
        let sampler = Sampler::new(policy, scorer, sampler_config)?;
        load_s = load_started.elapsed().as_secs_f64();
        started = Instant::now();
        let sampling = SamplingSettings {
            num_samples: settings.num_samples,
            temperature: settings.temperature,
            top_p: settings.top_p,
            top_k: 0,
            max_new_tokens: settings.max_new_tokens,
            stop: Vec::new(),
            seed: settings.seed,
        };
        // Chunks of whole tasks: progress and the partial file advance per chunk, and a
        // chunk still fills several generation batches.
        let per_chunk = (4 * config.rollout.max_batch_sequences / settings.num_samples).max(1);
        let bar = progress::bar("eval", problems.len() as u64, "tasks", options.progress);
        bar.set_position(done.len() as u64);
        for chunk in pending.chunks(per_chunk) {
            if options.cancel.is_cancelled() {
                bar.abandon();
                return Err(PipelineError::Cancelled { stage: "eval" });
            }
            let tasks = chunk
                .iter()
                .map(|problem| SampleTask {
                    key: problem.task_id.clone(),
                    problem: problem.clone(),
                })
                .collect();
            let batch = match sampler.run(tasks, &sampling, &options.cancel).await {
                Ok(batch) => batch,
                Err(tgrpo_rollout::RolloutError::Cancelled) => {
                    bar.abandon();
                    return Err(PipelineError::Cancelled { stage: "eval" });
                }
                Err(err) => return Err(err.into()),
            };
            generated_tokens += batch.stats.generated_tokens;
            generated_samples += batch.stats.sequences;
            let results: Vec<TaskResult> = batch.tasks.iter().map(task_result).collect();
            append_lines(
                &partial,
                &results
                    .iter()
                    .cloned()
                    .map(PartialLine::Task)
                    .collect::<Vec<_>>(),
            )?;
            for result in results {
                done.insert(result.task_id.clone(), result);
            }
            bar.set_position(done.len() as u64);
            let so_far: Vec<TaskResult> = done.values().cloned().collect();
            let k1 = pass_at_k_of(&so_far, &[1]);
            if let Some(value) = k1.get("1") {
                bar.set_message(format!("pass@1 {value:.3}"));
            }
        }
        bar.finish_and_clear();
    }
    let wall_s = started.elapsed().as_secs_f64();
    let tasks: Vec<TaskResult> = problems
        .iter()
        .filter_map(|problem| done.get(&problem.task_id).cloned())
        .collect();
    let num_skipped = tasks.iter().filter(|task| task.skipped.is_some()).count();
    let results = EvalResults {
        pass_at_k: pass_at_k_of(&tasks, &settings.k),
        num_tasks: tasks.len() - num_skipped,
        num_samples_per_task: settings.num_samples,
        num_skipped,
        settings: settings.clone(),
        wall_s,
        load_s,
        generated_tokens,
        samples_per_s: if wall_s > 0.0 {
            generated_samples as f64 / wall_s
        } else {
            0.0
        },
        tokens_per_s: if wall_s > 0.0 {
            generated_tokens as f64 / wall_s
        } else {
            0.0
        },
        tasks,
    };
    let text = serde_json::to_string_pretty(&results).expect("results serialize");
    crate::data::write_file_atomic(&settings.output, text.as_bytes())?;
    let _ = std::fs::remove_file(&partial);
    let svg = settings.output.with_extension("svg");
    let by_k = results.pass_at_k_by_k();
    crate::report::write_svg(
        &svg,
        &format!("tgrpo eval · {}", settings.data_path.display()),
        &[crate::report::pass_at_k_panel(&[("pass@k", &by_k)])],
    )?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, n: usize, correct: usize) -> TaskResult {
        TaskResult {
            task_id: id.to_string(),
            n,
            correct,
            sample: None,
            skipped: None,
        }
    }

    #[test]
    fn pass_at_k_averages_tasks_and_ignores_skipped_ones() {
        let mut skipped = task("c", 0, 0);
        skipped.skipped = Some("too long".into());
        let tasks = [task("a", 4, 4), task("b", 4, 0), skipped];
        let values = pass_at_k_of(&tasks, &[1, 4]);
        assert_eq!(values["1"], 0.5);
        assert_eq!(values["4"], 0.5);
        let values = pass_at_k_of(&[task("a", 4, 1)], &[1, 2]);
        assert!((values["1"] - 0.25).abs() < 1e-12);
        assert!((values["2"] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn partial_file_is_reused_only_with_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json.partial.jsonl");
        let settings = serde_json::json!({"n": 2});
        append_lines(
            &path,
            &[
                PartialLine::Settings {
                    settings: settings.clone(),
                },
                PartialLine::Task(task("a", 2, 1)),
            ],
        )
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, b"{\"task_id\":\"b\",\"n"))
            .unwrap();
        assert_eq!(read_partial(&path, &settings), vec![task("a", 2, 1)]);
        assert!(read_partial(&path, &serde_json::json!({"n": 3})).is_empty());
    }
}
