//! `tgrpo local` (the demo) and `tgrpo all`: the four stages in one process, and how
//! their results are printed.
//!
//! Without `--config`, `tgrpo local` runs the built-in CPU demo: a tiny random-weight
//! model built at start, 16 built-in problems, the reference teacher. With `--config`, it
//! runs that config in local mode. Either way it evaluates the base model first, so it
//! ends with pass@k before and after.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use tgrpo_pipeline::config::{Override, TgrpoConfig};
use tgrpo_pipeline::local::{RunReport, mean_over};
use tgrpo_pipeline::train::{StageOptions, TrainReport};

use super::run_config::{ConfigArgs, teacher_api_key};

/// Arguments of `tgrpo local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Remove the output directory first (a rerun otherwise resumes, and a finished run
    /// only reprints its results).
    #[arg(long)]
    pub fresh: bool,
}

/// Arguments of `tgrpo all`.
#[derive(Debug, Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs the demo (or a config) in local mode and prints the before/after summary.
pub async fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let demo = args.config.config.is_none();
    let (base, overrides) = if demo {
        let mut overrides = Vec::new();
        if let Some(dir) = &args.config.output_dir {
            // The demo keeps everything under one directory.
            let data = dir.join("data");
            overrides.push(Override::new(
                "data.output_dir",
                data.display(),
                "--output-dir",
            ));
            overrides.push(Override::new(
                "teacher.cache_dir",
                data.join("teacher_cache").display(),
                "--output-dir",
            ));
            overrides.push(Override::new(
                "teacher.traces_path",
                data.join("synthetic_traces.jsonl").display(),
                "--output-dir",
            ));
        }
        (tgrpo_pipeline::demo::config(), overrides)
    } else {
        (TgrpoConfig::default(), Vec::new())
    };
    let config = args.config.load(&base, overrides)?;
    if args.fresh && config.output_dir.exists() {
        std::fs::remove_dir_all(&config.output_dir)?;
    }
    if demo {
        print_demo_intro(&config);
    }
    let options = StageOptions {
        progress: args.config.progress(),
        cancel: crate::shutdown::on_signal(),
    };
    let report = tgrpo_pipeline::local::run_local(&config, teacher_api_key(), &options).await?;
    print_run(&config, &report, demo);
    println!("wall time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs data, synthesis, train and eval and prints what each did.
pub async fn run_all(args: AllArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = args.config.load(&TgrpoConfig::default(), Vec::new())?;
    let options = StageOptions {
        progress: args.config.progress(),
        cancel: crate::shutdown::on_signal(),
    };
    let report = tgrpo_pipeline::local::run_all(&config, teacher_api_key(), &options).await?;
    print_run(&config, &report, false);
    println!("wall time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn print_demo_intro(config: &TgrpoConfig) {
    println!("tgrpo local: the whole pipeline in one process, on CPU");
    println!("  (data → synthesis → eval of the base model → train → eval of the adapter)");
    println!();
    println!("  model:    {}", tgrpo_pipeline::demo::MODEL_DESCRIPTION);
    println!(
        "  teacher:  the REFERENCE teacher, a stand-in for {}: it answers with each problem's",
        config.teacher.model_name
    );
    println!(
        "            reference solution (an oracle, not a model); it is asked about {} of the {} problems",
        config.synthesis.limit,
        tgrpo_pipeline::demo::problems().len()
    );
    println!(
        "  problems: 16 built-in one-line functions (add, subtract, is_even, reverse_string, …);"
    );
    println!(
        "            the demo trains AND evaluates on them: it shows that the loop learns, not that"
    );
    println!("            a tiny model generalises");
    println!();
}

/// Prints what the train stage did.
pub fn print_train(report: &TrainReport) {
    if report.already_done {
        println!(
            "train: already done ({} exists; remove the output directory to train again)",
            report.final_model.display()
        );
        return;
    }
    if let Some(summary) = &report.summary {
        println!(
            "train: {} steps, adapter v{}, in {:.0} s; {} groups accepted, {} stale, {} duplicate",
            summary.steps,
            summary.adapter_version,
            report.wall_s,
            summary.counters.accepted,
            summary.counters.dropped_stale,
            summary.counters.duplicates,
        );
    }
    println!(
        "outputs: {} (PEFT adapter), {}, {}",
        report.final_model.display(),
        report.metrics.display(),
        report.report.display()
    );
}

fn sparkline(values: &[f64], buckets: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() {
        return String::new();
    }
    let per = values.len().div_ceil(buckets).max(1);
    values
        .chunks(per)
        .map(|chunk| {
            let mean = chunk.iter().sum::<f64>() / chunk.len() as f64;
            BARS[((mean.clamp(0.0, 1.0) * 7.0).round()) as usize]
        })
        .collect()
}

fn format_pass(values: &std::collections::BTreeMap<String, f64>) -> String {
    let mut pairs: Vec<(usize, f64)> = values
        .iter()
        .filter_map(|(k, value)| Some((k.parse().ok()?, *value)))
        .collect();
    pairs.sort_by_key(|(k, _)| *k);
    pairs
        .iter()
        .map(|(k, value)| format!("pass@{k} {value:.3}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn print_run(config: &TgrpoConfig, report: &RunReport, demo: bool) {
    println!("{}", report.data);
    if let Some(synthesis) = &report.synthesis {
        println!(
            "synthesis: {} of {} training problems asked of {}; {} of {} traces pass their tests",
            synthesis.problems,
            synthesis.training_problems,
            synthesis.teacher,
            synthesis.summary.passed_total,
            synthesis.summary.records_total,
        );
    }
    if let Some(before) = &report.before {
        println!(
            "eval before training ({} tasks × {} samples, T={}): {}",
            before.num_tasks,
            before.num_samples_per_task,
            before.settings.temperature,
            before.pass_at_k_line()
        );
    }
    print_train(&report.train);
    let rewards: Vec<f64> = report
        .reward_curve
        .iter()
        .map(|(_, reward)| *reward)
        .collect();
    if let (Some(first), Some(last)) = (report.reward_curve.first(), report.reward_curve.last()) {
        let window = (rewards.len() as u64 / 5).max(1);
        let early = mean_over(&report.reward_curve, first.0..=first.0 + window - 1);
        let late = mean_over(&report.reward_curve, last.0 + 1 - window..=last.0);
        if let (Some(early), Some(late)) = (early, late) {
            println!(
                "mean reward of the rollouts: {early:.2} over the first {window} steps → {late:.2} over the last {window}"
            );
        }
        println!("  reward by step (0 → 1): {}", sparkline(&rewards, 40));
    }
    if let Some((step, grpo, teacher, own)) = report.loss_curve.last() {
        let show =
            |value: &Option<f64>| value.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
        println!(
            "  losses at step {step}: grpo {} · teacher-sft {} · self-sft {} (weights α={} β={} γ={})",
            show(grpo),
            show(teacher),
            show(own),
            config.dual_source.alpha,
            config.dual_source.beta,
            config.dual_source.gamma
        );
    }
    let after = &report.after;
    println!(
        "eval after training ({} tasks × {} samples, T={}): {}",
        after.num_tasks,
        after.num_samples_per_task,
        after.settings.temperature,
        after.pass_at_k_line()
    );
    if !report.taught_tasks.is_empty() {
        let taught = report.taught_tasks.len();
        let untaught = after.tasks.len().saturating_sub(taught);
        for (label, flag, count) in [
            ("problems with teacher traces", true, taught),
            ("problems without (GRPO and self-SFT only)", false, untaught),
        ] {
            if count == 0 {
                continue;
            }
            let before = report
                .before
                .as_ref()
                .map(|before| format_pass(&report.pass_at_k_split(before, flag)));
            let after = format_pass(&report.pass_at_k_split(after, flag));
            match before {
                Some(before) => println!("  {label} ({count}): {before}  →  {after}"),
                None => println!("  {label} ({count}): {after}"),
            }
        }
    }
    let output: PathBuf = config.output_dir.clone();
    println!(
        "outputs in {}: final_model/ (PEFT adapter), checkpoint-N/, metrics.jsonl, report.svg, evaluation_results.json{}",
        output.display(),
        if report.before.is_some() {
            ", eval_before.json"
        } else {
            ""
        }
    );
    if demo {
        println!(
            "(the demo evaluates on its own training problems; a real run: `tgrpo all --config configs/cluster-qwen2.5-coder-1.5b.toml`)"
        );
    }
}
