//! `tgrpo all` and `tgrpo local`: the four stages in order, in one process.
//!
//! [`run_all`] is data → synthesis → train → eval (of the trained adapter). [`run_local`]
//! adds an eval of the base model before training, so the run ends with pass@k before
//! and after, the reward curve, and one report: the demo's shape. Every stage resumes, so
//! rerunning either finishes an interrupted run or, for a finished one, only reprints it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::TgrpoConfig;
use crate::data::{DataReport, prepare_data};
use crate::error::Result;
use crate::eval::{EvalResults, EvalSettings, TaskResult, evaluate, pass_at_k_of};
use crate::report::{Panel, pass_at_k_panel, training_panels, write_svg};
use crate::synthesis::{SynthesisReport, synthesize_traces};
use crate::train::{StageOptions, TrainReport, train};

/// `(step, loss_grpo, loss_teacher_sft, loss_self_sft)` of one optimizer step (a term is
/// `None` when it was off or had no examples that step).
pub type LossPoint = (u64, Option<f64>, Option<f64>, Option<f64>);

/// What `run_all` / `run_local` did, stage by stage.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The data stage.
    pub data: DataReport,
    /// The synthesis stage; `None` when the teacher-SFT weight β is 0 (no traces needed).
    pub synthesis: Option<SynthesisReport>,
    /// The base model's eval (local mode only).
    pub before: Option<EvalResults>,
    /// The train stage.
    pub train: TrainReport,
    /// The trained adapter's eval.
    pub after: EvalResults,
    /// `(step, mean reward)` of every optimizer step, from `metrics.jsonl`.
    pub reward_curve: Vec<(u64, f64)>,
    /// `(step, loss_grpo, loss_teacher_sft, loss_self_sft)` of every step.
    pub loss_curve: Vec<LossPoint>,
    /// Task ids that had at least one passing teacher trace.
    pub taught_tasks: BTreeSet<String>,
    /// The run's report (training panels and pass@k).
    pub report: PathBuf,
}

impl RunReport {
    /// pass@k of `results` over the tasks with (`taught = true`) or without teacher
    /// traces.
    pub fn pass_at_k_split(&self, results: &EvalResults, taught: bool) -> BTreeMap<String, f64> {
        let tasks: Vec<TaskResult> = results
            .tasks
            .iter()
            .filter(|task| self.taught_tasks.contains(&task.task_id) == taught)
            .cloned()
            .collect();
        pass_at_k_of(&tasks, &results.settings.k)
    }
}

async fn stages(
    config: &TgrpoConfig,
    api_key: Option<String>,
    options: &StageOptions,
    before: bool,
) -> Result<RunReport> {
    let mut config = config.clone();
    // Every stage of a whole run resumes.
    config.training.resume = true;
    config.validate()?;
    let data = prepare_data(&config).await?;
    tracing::info!("{data}");
    let synthesis = if config.dual_source.beta > 0.0 {
        Some(synthesize_traces(&config, api_key, options).await?)
    } else {
        tracing::info!("dual_source.beta = 0: no teacher traces needed, synthesis skipped");
        None
    };
    let before_results = if before {
        let mut settings = EvalSettings::from_config(&config)?;
        settings.adapter = None;
        settings.output = config.output_dir.join("eval_before.json");
        Some(evaluate(&config, &settings, options).await?)
    } else {
        None
    };
    let train_report = train(&config, options).await?;
    let mut settings = EvalSettings::from_config(&config)?;
    if settings.adapter.is_none() {
        settings.adapter = Some(train_report.final_model.clone());
    }
    let after = evaluate(&config, &settings, options).await?;

    let taught_tasks = if synthesis.is_some() && config.dual_source.teacher_traces_path.exists() {
        tgrpo_teacher::load_traces(&config.dual_source.teacher_traces_path, true)?
            .into_iter()
            .map(|trace| trace.problem_id)
            .collect()
    } else {
        BTreeSet::new()
    };
    let (reward_curve, loss_curve) = read_curves(&train_report.metrics)?;
    let report_path = train_report.report.clone();
    let mut panels: Vec<Panel> = if train_report.metrics.exists() {
        training_panels(&train_report.metrics)?
    } else {
        Vec::new()
    };
    let after_by_k = after.pass_at_k_by_k();
    let before_by_k = before_results.as_ref().map(EvalResults::pass_at_k_by_k);
    let mut labelled: Vec<(&str, &BTreeMap<usize, f64>)> = Vec::new();
    if let Some(before_by_k) = &before_by_k {
        labelled.push(("before", before_by_k));
    }
    labelled.push(("after", &after_by_k));
    panels.push(pass_at_k_panel(&labelled));
    write_svg(
        &report_path,
        &format!("tgrpo · run {}", config.run_id),
        &panels,
    )?;
    Ok(RunReport {
        data,
        synthesis,
        before: before_results,
        train: train_report,
        after,
        reward_curve,
        loss_curve,
        taught_tasks,
        report: report_path,
    })
}

/// Runs data, synthesis, train and eval in order (see the module docs).
pub async fn run_all(
    config: &TgrpoConfig,
    api_key: Option<String>,
    options: &StageOptions,
) -> Result<RunReport> {
    stages(config, api_key, options, false).await
}

/// Like [`run_all`], with an eval of the base model before training.
pub async fn run_local(
    config: &TgrpoConfig,
    api_key: Option<String>,
    options: &StageOptions,
) -> Result<RunReport> {
    stages(config, api_key, options, true).await
}

type Curves = (Vec<(u64, f64)>, Vec<LossPoint>);

/// Reward and loss terms per step from `metrics.jsonl` (missing file: empty curves).
pub fn read_curves(metrics: &std::path::Path) -> Result<Curves> {
    let Ok(text) = std::fs::read_to_string(metrics) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut rewards = Vec::new();
    let mut losses = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = row.get("step").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let field = |name: &str| row.get(name).and_then(serde_json::Value::as_f64);
        if let Some(reward) = field("reward_mean") {
            rewards.push((step, reward));
        }
        losses.push((
            step,
            field("loss_grpo"),
            field("loss_teacher_sft"),
            field("loss_self_sft"),
        ));
    }
    Ok((rewards, losses))
}

/// Mean of the values in `curve` whose step is in `range` (1-based, inclusive).
pub fn mean_over(curve: &[(u64, f64)], range: std::ops::RangeInclusive<u64>) -> Option<f64> {
    let values: Vec<f64> = curve
        .iter()
        .filter(|(step, _)| range.contains(step))
        .map(|(_, value)| *value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
