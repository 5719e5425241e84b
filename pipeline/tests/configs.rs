//! The example configs in `configs/` load, validate, and say what they claim.

use std::path::{Path, PathBuf};

use tgrpo_pipeline::config::{DEMO_MODEL_SOURCE, DataSource, NoEnv, TeacherKind, TgrpoConfig};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name)
}

fn load(name: &str) -> TgrpoConfig {
    let config = TgrpoConfig::load(Some(&example(name)), &NoEnv, &[])
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    config
        .validate()
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    config
}

#[test]
fn the_demo_file_is_exactly_what_tgrpo_local_runs() {
    let config = load("demo.toml");
    assert_eq!(config, tgrpo_pipeline::demo::config());
    assert_eq!(config.model.source, DEMO_MODEL_SOURCE);
    assert_eq!(config.data.source, DataSource::Demo);
    assert_eq!(config.synthesis.teacher, TeacherKind::Reference);
    assert!(
        config
            .evaluation
            .k
            .iter()
            .all(|&k| k <= config.evaluation.num_samples)
    );
}

#[test]
fn the_cluster_file_runs_the_qwen_student_on_gpus_with_the_32b_teacher() {
    let config = load("cluster-qwen2.5-coder-1.5b.toml");
    assert_eq!(config.model.source, "Qwen/Qwen2.5-Coder-1.5B-Instruct");
    assert_eq!(config.model.device, "cuda");
    // One student for every role.
    assert_eq!(config.learner.model, config.model.source);
    assert_eq!(config.rollout.model, config.model.source);
    assert_eq!(config.rollout.device, "cuda");
    assert_eq!(config.teacher.model_name, "Qwen/Qwen3-32B-FP8");
    assert!(config.teacher.api_url.starts_with("http://"));
    assert_eq!(config.synthesis.teacher, TeacherKind::Http);
    assert_eq!(config.rollout.executor_endpoints.len(), 4);
    assert!(config.broadcast.url.starts_with("nats://"));
    assert_eq!(config.lora.r, 64);
    assert_eq!(config.lora.alpha, 128.0);
    assert_eq!(config.lora.target_modules.len(), 7);
    assert_eq!(config.evaluation.k, vec![1, 5, 10, 25, 50, 100]);
    assert_eq!(
        config.learner.prompts_path,
        PathBuf::from("data/mbpp_train.jsonl")
    );
}

#[test]
fn the_printed_config_loads_back() {
    for name in ["demo.toml", "cluster-qwen2.5-coder-1.5b.toml"] {
        let config = load(name);
        let again = TgrpoConfig::from_toml_str(&config.to_toml_string(), name).unwrap();
        assert_eq!(again, config, "{name}");
    }
}
