//! The local teacher: a tiny random policy model in this process behind the same
//! interface, so synthesis runs offline: traces recorded, verified, cached.

mod support;

use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_policy::{Family, LoadOptions, ModelSource, Policy, tiny};
use tgrpo_teacher::{LocalTeacher, TeacherConfig, TraceSource, load_traces, synthesize};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn offline_synthesis_with_a_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    tiny::write_hf_dir(&model_dir, Family::Qwen2, 7).unwrap();
    let policy = Policy::load(&ModelSource::Dir(model_dir), &LoadOptions::default()).unwrap();
    let teacher = LocalTeacher::new(policy, "tiny-qwen2", 2);
    let config = TeacherConfig {
        max_tokens: 24,
        cache_dir: Some(dir.path().join("cache")),
        ..TeacherConfig::default()
    };
    let problems: Vec<Problem> = ["a", "b"]
        .iter()
        .map(|id| Problem {
            task_id: (*id).to_owned(),
            text: format!("Write a function `f_{id}`."),
            reference: None,
            tests: vec![format!("assert f_{id}() == 1")],
            setup_code: String::new(),
            format: TestFormat::Mbpp,
            entry_point: Some(format!("f_{id}")),
            prompt: None,
        })
        .collect();
    let traces = dir.path().join("traces.jsonl");
    let source = TraceSource::new(&config, teacher.clone(), support::verifier().await).unwrap();
    let cancel = CancellationToken::new();
    let summary = synthesize(&source, &problems, 2, &traces, false, &cancel)
        .await
        .unwrap();
    assert!(
        summary.is_complete() && summary.failures.is_empty(),
        "{summary}"
    );
    assert_eq!(teacher.generations(), 4);
    let records = load_traces(&traces, false).unwrap();
    assert_eq!(records.len(), 4);
    for record in &records {
        assert_eq!(record.teacher_model, "tiny-qwen2");
        assert!(record.usage.prompt_tokens > 0);
        assert!(record.usage.completion_tokens > 0 && record.usage.completion_tokens <= 24);
        // Random weights write no passing code: the verdict must say so.
        assert!(!record.passed, "{record:?}");
        assert!(["no_code", "failed", "error"].contains(&record.verdict.as_str()));
    }
    assert_eq!(
        summary.completion_tokens,
        records
            .iter()
            .map(|r| r.usage.completion_tokens)
            .sum::<u64>()
    );

    // The cache serves the rerun: the model is not run again.
    std::fs::remove_file(&traces).unwrap();
    let summary = synthesize(&source, &problems, 2, &traces, false, &cancel)
        .await
        .unwrap();
    assert_eq!((summary.written, summary.from_cache), (4, 4));
    assert_eq!(teacher.generations(), 4);
}
