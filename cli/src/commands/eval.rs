//! `tgrpo eval`: n samples per problem, scored by executors, unbiased pass@k, for the
//! base model or the base model with a PEFT adapter.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tgrpo_pipeline::config::{Override, TgrpoConfig};
use tgrpo_pipeline::eval::{EvalSettings, evaluate};
use tgrpo_pipeline::train::StageOptions;

use super::run_config::ConfigArgs;

/// The problems' file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// MBPP rows (`data/mbpp_test.jsonl` by default).
    Mbpp,
    /// The openai/human-eval JSONL format.
    Humaneval,
}

/// Arguments of `tgrpo eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// The model: an HF directory, a `.gguf` file, `org/name[@revision]` on the hub, or
    /// `builtin:demo` [default: the config's model.source].
    #[arg(long)]
    pub model: Option<String>,

    /// A PEFT adapter directory to evaluate on top of the model (e.g. outputs/final_model).
    #[arg(long)]
    pub adapter: Option<PathBuf>,

    /// The problems' format [default: mbpp].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,

    /// The problems file [default: data/mbpp_test.jsonl].
    #[arg(long)]
    pub data_path: Option<PathBuf>,

    /// Only the first N problems.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Samples per problem [default: 100].
    #[arg(long)]
    pub n: Option<usize>,

    /// The k of pass@k, comma-separated, each ≤ n [default: 1,5,10,25,50,100, those ≤ n].
    #[arg(long, value_delimiter = ',')]
    pub k: Vec<usize>,

    /// Sampling temperature (0 = greedy) [default: 0.8].
    #[arg(long)]
    pub temperature: Option<f64>,

    /// Longest answer in tokens [default: 512].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,

    /// Sampling seed [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,

    /// The results JSON [default: OUTPUT_DIR/evaluation_results.json].
    #[arg(long)]
    pub output: Option<PathBuf>,

    /// Remote executors (`host:port`, comma-separated); without, an in-process sandbox pool.
    #[arg(long, value_delimiter = ',')]
    pub executor_endpoints: Vec<String>,
}

impl EvalArgs {
    fn overrides(&self, base_k: &[usize]) -> Vec<Override> {
        let mut overrides = Vec::new();
        let mut set = |key: &str, value: String, flag: &str| {
            overrides.push(Override::new(key, value, flag));
        };
        if let Some(model) = &self.model {
            set("model.source", model.clone(), "--model");
        }
        if let Some(adapter) = &self.adapter {
            set(
                "evaluation.adapter",
                adapter.display().to_string(),
                "--adapter",
            );
        }
        if let Some(dataset) = self.dataset {
            let name = match dataset {
                DatasetArg::Mbpp => "mbpp",
                DatasetArg::Humaneval => "humaneval",
            };
            set("evaluation.dataset", name.to_string(), "--dataset");
        }
        if let Some(path) = &self.data_path {
            set(
                "evaluation.data_path",
                path.display().to_string(),
                "--data-path",
            );
        }
        if let Some(limit) = self.limit {
            set("evaluation.limit", limit.to_string(), "--limit");
        }
        if let Some(n) = self.n {
            set("evaluation.num_samples", n.to_string(), "--n");
            if self.k.is_empty() {
                // --n alone keeps the default k values that fit.
                let ks: Vec<String> = base_k
                    .iter()
                    .filter(|&&k| k <= n)
                    .map(ToString::to_string)
                    .collect();
                let ks = if ks.is_empty() {
                    vec!["1".to_string()]
                } else {
                    ks
                };
                set("evaluation.k", ks.join(","), "--n");
            }
        }
        if !self.k.is_empty() {
            let ks: Vec<String> = self.k.iter().map(ToString::to_string).collect();
            set("evaluation.k", ks.join(","), "--k");
        }
        if let Some(temperature) = self.temperature {
            set(
                "evaluation.temperature",
                temperature.to_string(),
                "--temperature",
            );
        }
        if let Some(tokens) = self.max_new_tokens {
            set(
                "evaluation.max_new_tokens",
                tokens.to_string(),
                "--max-new-tokens",
            );
        }
        if let Some(seed) = self.seed {
            set("evaluation.seed", seed.to_string(), "--seed");
        }
        if let Some(output) = &self.output {
            set(
                "evaluation.output",
                output.display().to_string(),
                "--output",
            );
        }
        if !self.executor_endpoints.is_empty() {
            set(
                "rollout.executor_endpoints",
                self.executor_endpoints.join(","),
                "--executor-endpoints",
            );
        }
        overrides
    }
}

/// Evaluates and prints pass@k and where the results are.
pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    // The k list --n filters is the file's (or the default).
    let base = tgrpo_pipeline::config::TgrpoConfig::load(
        args.config.config.as_deref(),
        &tgrpo_pipeline::config::ProcessEnv,
        &[],
    )?;
    let config = args
        .config
        .load(&TgrpoConfig::default(), args.overrides(&base.evaluation.k))?;
    let settings = EvalSettings::from_config(&config)?;
    let options = StageOptions {
        progress: args.config.progress(),
        cancel: crate::shutdown::on_signal(),
    };
    let results = evaluate(&config, &settings, &options).await?;
    println!(
        "{} tasks × {} samples{}: {}",
        results.num_tasks,
        results.num_samples_per_task,
        if results.num_skipped > 0 {
            format!(" ({} skipped: prompt too long)", results.num_skipped)
        } else {
            String::new()
        },
        results.pass_at_k_line()
    );
    if results.wall_s > 0.0 {
        // A real model on a CPU makes well under one sample per second: three significant
        // digits, not one decimal that prints 0.0.
        println!(
            "throughput: {:.3} samples/s, {:.1} tokens/s ({} tokens in {:.1} s; model loaded in {:.1} s)",
            results.samples_per_s,
            results.tokens_per_s,
            results.generated_tokens,
            results.wall_s,
            results.load_s
        );
    }
    println!(
        "results: {} (report {})",
        settings.output.display(),
        settings.output.with_extension("svg").display()
    );
    Ok(())
}
