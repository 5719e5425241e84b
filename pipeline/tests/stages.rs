//! The stages as library functions: what each writes, and that a rerun resumes instead of
//! redoing work.

use std::path::Path;

use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_pipeline::PipelineError;
use tgrpo_pipeline::config::{DataSource, EvalDataset, TgrpoConfig};
use tgrpo_pipeline::data::{MbppRecord, prepare_data};
use tgrpo_pipeline::eval::{EvalResults, EvalSettings, evaluate};
use tgrpo_pipeline::local::run_local;
use tgrpo_pipeline::synthesis::synthesize_traces;
use tgrpo_pipeline::train::{StageOptions, is_adapter_dir, train};

mod common;
use common::{demo_config, executor_config};

fn row(task_id: u64, code: &str, test: &str) -> MbppRecord {
    MbppRecord {
        task_id,
        text: format!("Task {task_id}."),
        code: code.to_string(),
        test_list: vec![test.to_string()],
        test_setup_code: String::new(),
        challenge_test_list: Vec::new(),
    }
}

#[tokio::test]
async fn data_stage_reads_each_source_splits_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TgrpoConfig::default();
    config.data.output_dir = dir.path().join("data");

    // The embedded release: the standard test split held out, the rest 80/20.
    config.data.source = DataSource::Embedded;
    let report = prepare_data(&config).await.unwrap();
    assert!(!report.already_done);
    let manifest = &report.manifest;
    assert_eq!(manifest.used, DataSource::Embedded);
    assert_eq!((manifest.total, manifest.test), (974, 500));
    assert_eq!(manifest.train + manifest.validation, 474);
    assert_eq!(manifest.train, 379);
    let test = tgrpo_dataset::mbpp::load_jsonl(&report.test_path).unwrap();
    assert!(test.iter().all(|problem| {
        let id: u64 = problem.task_id.parse().unwrap();
        (11..=510).contains(&id)
    }));
    let train = tgrpo_dataset::mbpp::load_jsonl(&report.train_path).unwrap();
    assert_eq!(train.len(), 379);
    assert!(
        train
            .iter()
            .all(|problem| problem.entry_point.is_some() || problem.reference.is_some())
    );

    // A rerun with the same settings does nothing; another seed redoes the split.
    let again = prepare_data(&config).await.unwrap();
    assert!(again.already_done);
    assert_eq!(again.manifest, report.manifest);
    config.data.seed = 7;
    let reseeded = prepare_data(&config).await.unwrap();
    assert!(!reseeded.already_done);
    let train_seed_7 = tgrpo_dataset::mbpp::load_jsonl(&reseeded.train_path).unwrap();
    assert_ne!(
        train.iter().map(|p| &p.task_id).collect::<Vec<_>>(),
        train_seed_7.iter().map(|p| &p.task_id).collect::<Vec<_>>()
    );

    // A local JSONL file.
    let file = dir.path().join("mine.jsonl");
    let rows: Vec<MbppRecord> = (1..=20)
        .map(|id| row(id * 30, "def f(x):\n    return x\n", "assert f(1) == 1"))
        .collect();
    tgrpo_dataset::jsonl::write_atomic(&file, &rows).unwrap();
    config.data.source = DataSource::Path;
    config.data.path = Some(file.clone());
    let report = prepare_data(&config).await.unwrap();
    assert_eq!(report.manifest.used, DataSource::Path);
    assert_eq!(report.manifest.total, 20);
    // Ids 30..=510 step 30 are in the test range: 17 of them.
    assert_eq!(report.manifest.test, 17);
    assert_eq!(report.manifest.train + report.manifest.validation, 3);

    // An unreachable (or nonexistent) hub repository falls back to the embedded copy
    // and says why; without the fallback it is an error naming the repository.
    config.data.source = DataSource::Hub;
    config.data.hub_repo = "tgrpo-tests/no-such-dataset".to_string();
    let report = prepare_data(&config).await.unwrap();
    assert_eq!(report.manifest.used, DataSource::Embedded);
    assert!(
        report
            .manifest
            .fallback_reason
            .as_deref()
            .is_some_and(|reason| reason.contains("no-such-dataset")),
        "{:?}",
        report.manifest
    );
    assert!(report.to_string().contains("hub was not reachable"));
    config.data.offline_fallback = false;
    config.data.seed = 8;
    let err = prepare_data(&config).await.unwrap_err().to_string();
    assert!(err.contains("no-such-dataset"), "{err}");

    // The demo's problems are both the training and the test set.
    config.data.source = DataSource::Demo;
    let report = prepare_data(&config).await.unwrap();
    assert_eq!(
        (
            report.manifest.train,
            report.manifest.validation,
            report.manifest.test
        ),
        (16, 0, 16)
    );
}

/// A model that always answers `def f(x): return 1`, and four problems of which it
/// solves exactly two, in MBPP rows.
fn scripted_eval_setup(dir: &Path) -> (TgrpoConfig, EvalSettings) {
    let model = dir.join("scripted");
    tgrpo_rollout::testing::write_scripted_model(&model, "def f(x): return 1", 30.0, 5).unwrap();
    let data = dir.join("eval.jsonl");
    let rows = vec![
        row(11, "def f(x): return 1", "assert f(2) == 1"),
        row(12, "def f(x): return 2", "assert f(2) == 2"),
        row(13, "def f(x): return 1", "assert f(5) == 1"),
        row(14, "def f(x): return 0", "assert f(5) == 0"),
    ];
    tgrpo_dataset::jsonl::write_atomic(&data, &rows).unwrap();
    let mut config = TgrpoConfig {
        output_dir: dir.join("outputs"),
        ..TgrpoConfig::default()
    };
    config.model.source = model.display().to_string();
    config.executor = executor_config();
    config.evaluation.data_path = Some(data);
    config.evaluation.num_samples = 3;
    config.evaluation.k = vec![1, 3];
    config.evaluation.temperature = 0.0;
    config.evaluation.max_new_tokens = 24;
    config.sync_derived();
    let settings = EvalSettings::from_config(&config).unwrap();
    (config, settings)
}

#[tokio::test]
async fn eval_counts_passes_per_task_and_resumes_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, settings) = scripted_eval_setup(dir.path());
    let results = evaluate(&config, &settings, &StageOptions::default())
        .await
        .unwrap();
    assert_eq!(results.num_tasks, 4);
    assert_eq!(results.num_samples_per_task, 3);
    assert_eq!(
        results.pass_at_k.keys().cloned().collect::<Vec<_>>(),
        vec!["1", "3"]
    );
    assert!((results.pass_at_k["1"] - 0.5).abs() < 1e-12, "{results:?}");
    assert!((results.pass_at_k["3"] - 0.5).abs() < 1e-12);
    let correct: Vec<(String, usize)> = results
        .tasks
        .iter()
        .map(|task| (task.task_id.clone(), task.correct))
        .collect();
    assert_eq!(
        correct,
        vec![
            ("11".into(), 3),
            ("12".into(), 0),
            ("13".into(), 3),
            ("14".into(), 0)
        ]
    );
    let failing = results.tasks[1].sample.as_ref().unwrap();
    assert_eq!(failing.verdict, "failed");
    assert!(failing.detail.contains("assert f(2) == 2"), "{failing:?}");
    assert_eq!(
        failing.code.as_deref().map(str::trim),
        Some("def f(x): return 1")
    );
    assert!(results.tokens_per_s > 0.0);
    // Every token is counted (the scripted model gives all 12 samples the same answer),
    // and the throughput is over sampling and scoring, model loading apart.
    assert!(
        results.generated_tokens > 0 && results.generated_tokens % 12 == 0,
        "{results:?}"
    );
    assert!(
        (results.tokens_per_s * results.wall_s - results.generated_tokens as f64).abs() < 1e-6,
        "{results:?}"
    );
    assert!(results.load_s > 0.0, "{results:?}");

    // The file holds the same; the SVG is next to it; the partial file is gone.
    let text = std::fs::read_to_string(&settings.output).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "pass_at_k",
        "num_tasks",
        "num_samples_per_task",
        "tasks",
        "generated_tokens",
        "load_s",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert!(settings.output.with_extension("svg").is_file());
    assert!(
        !dir.path()
            .join("outputs/evaluation_results.json.partial.jsonl")
            .exists()
    );

    // A rerun with the same settings reads the file back; other settings evaluate anew.
    let again = evaluate(&config, &settings, &StageOptions::default())
        .await
        .unwrap();
    assert_eq!(again, results);
    let mut limited = settings.clone();
    limited.limit = 2;
    let fewer: EvalResults = evaluate(&config, &limited, &StageOptions::default())
        .await
        .unwrap();
    assert_eq!(fewer.num_tasks, 2);
    assert!((fewer.pass_at_k["1"] - 0.5).abs() < 1e-12);
}

#[tokio::test]
async fn eval_reads_humaneval_problems() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut settings) = scripted_eval_setup(dir.path());
    let path = dir.path().join("humaneval.jsonl");
    let rows = [
        ("HumanEval/0", "assert candidate(3) == 1"),
        ("HumanEval/1", "assert candidate(3) == 3"),
    ];
    let text: String = rows
        .iter()
        .map(|(id, check)| {
            serde_json::json!({
                "task_id": id,
                "prompt": "def f(x):\n    \"\"\"Return something.\"\"\"\n",
                "canonical_solution": "    return 1\n",
                "test": format!("def check(candidate):\n    {check}\n"),
                "entry_point": "f",
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    settings.dataset = EvalDataset::Humaneval;
    settings.data_path = path;
    settings.output = dir.path().join("humaneval_results.json");
    let results = evaluate(&config, &settings, &StageOptions::default())
        .await
        .unwrap();
    assert_eq!(results.num_tasks, 2);
    assert_eq!(results.tasks[0].correct, 3, "{:?}", results.tasks[0]);
    assert_eq!(results.tasks[1].correct, 0);
    let problem: Problem = tgrpo_dataset::humaneval::load_jsonl(&settings.data_path)
        .unwrap()
        .remove(0);
    assert_eq!(problem.format, TestFormat::HumanEval);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_run_writes_every_output_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo_config(dir.path());
    config.training.epochs = 1; // 16 problems / 4 per step: 4 steps
    config.training.save_every_steps = 2;
    config.evaluation.num_samples = 2;
    config.evaluation.k = vec![1, 2];
    let options = StageOptions::default();

    let report = run_local(&config, None, &options).await.unwrap();
    let out = &config.output_dir;
    let synthesis = report.synthesis.as_ref().unwrap();
    assert_eq!((synthesis.problems, synthesis.training_problems), (8, 16));
    assert_eq!(synthesis.summary.passed_total, 8, "{}", synthesis.summary);
    assert_eq!(report.taught_tasks.len(), 8);
    assert_eq!(report.reward_curve.len(), 4);
    assert_eq!(report.train.summary.as_ref().unwrap().steps, 4);
    assert!(is_adapter_dir(&out.join("final_model")));
    assert!(out.join("checkpoint-4").is_dir());
    assert!(out.join("config.toml").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    let svg = std::fs::read_to_string(&report.report).unwrap();
    for text in [
        "reward_mean",
        "loss_teacher_sft",
        "pass@k",
        "before",
        "after",
    ] {
        assert!(svg.contains(text), "report.svg lacks {text}");
    }
    let before = report.before.as_ref().unwrap();
    assert_eq!(before.num_tasks, 16);
    assert_eq!(before.settings.adapter, None);
    assert_eq!(
        report.after.settings.adapter.as_deref(),
        Some(out.join("final_model").as_path())
    );
    assert!(out.join("eval_before.json").is_file());
    assert!(out.join("evaluation_results.json").is_file());

    // Everything is on disk: the rerun trains nothing and reports the same numbers.
    let rerun = run_local(&config, None, &options).await.unwrap();
    assert!(rerun.data.already_done);
    assert_eq!(rerun.synthesis.as_ref().unwrap().summary.written, 0);
    assert!(rerun.train.already_done);
    assert_eq!(rerun.after, report.after);

    // An unfinished run (checkpoints, no final adapter) is not silently restarted...
    std::fs::remove_dir_all(out.join("final_model")).unwrap();
    let err = train(&config, &options).await.unwrap_err();
    assert!(
        matches!(&err, PipelineError::Stage { message, .. } if message.contains("--resume")),
        "{err}"
    );
    // ...and resumes from its newest checkpoint when asked.
    config.training.resume = true;
    let resumed = train(&config, &options).await.unwrap();
    assert_eq!(resumed.summary.as_ref().unwrap().steps, 4);
    assert!(is_adapter_dir(&out.join("final_model")));
}

#[tokio::test]
async fn synthesis_with_the_reference_teacher_records_verified_traces_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    prepare_data(&config).await.unwrap();
    let report = synthesize_traces(&config, None, &StageOptions::default())
        .await
        .unwrap();
    assert_eq!(report.problems, 8);
    assert_eq!(report.summary.written, 8);
    assert_eq!(report.summary.passed_total, 8);
    assert!(report.teacher.contains("reference"));
    let traces = tgrpo_teacher::load_traces(&config.teacher.traces_path, true).unwrap();
    assert_eq!(traces.len(), 8);
    assert!(
        traces
            .iter()
            .all(|trace| trace.thinking.is_some() && trace.passed)
    );
    let again = synthesize_traces(&config, None, &StageOptions::default())
        .await
        .unwrap();
    assert_eq!(again.summary.written, 0);
    assert_eq!(again.summary.records_total, 8);
}
