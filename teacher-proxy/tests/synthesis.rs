//! The synthesis stage end to end against a fake vLLM on loopback: verified traces,
//! 100% cache hits on a rerun, a 400 reported with its problem id, and resumption after a
//! run killed midway (cancelled, or its future dropped, with a torn last line).

mod support;

use std::path::Path;
use std::time::Duration;

use support::{FakeTeacher, Reply, Seen};
use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_teacher::{HttpTeacher, TeacherConfig, TraceSource, Verifier, load_traces, synthesize};
use tokio_util::sync::CancellationToken;

fn problem(task_id: &str, name: &str, tests: &[&str]) -> Problem {
    Problem {
        task_id: task_id.to_owned(),
        text: format!("Write a function `{name}`."),
        reference: None,
        tests: tests.iter().map(|t| t.to_string()).collect(),
        setup_code: String::new(),
        format: TestFormat::Mbpp,
        entry_point: Some(name.to_owned()),
        prompt: None,
    }
}

/// Three problems the fake answers in three different ways.
fn problems() -> Vec<Problem> {
    vec![
        problem(
            "add",
            "add",
            &["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
        ),
        problem("mul", "mul", &["assert mul(2, 3) == 6"]),
        problem("neg", "neg", &["assert neg(1) == -1"]),
    ]
}

/// vLLM with a reasoning parser: `add` gets right code with `reasoning_content`, `mul`
/// gets wrong code with an inline think block (no parser), `neg` gets prose, no tags.
fn answer(seen: &Seen) -> Reply {
    let text = seen.user_text();
    if text.contains("`add`") {
        Reply::completion(
            Some("Add the two numbers."),
            "```python\ndef add(a, b):\n    return a + b\n```",
        )
    } else if text.contains("`mul`") {
        Reply::completion(
            None,
            "<think>\nMultiply... or add?\n</think>\n\n```python\ndef mul(a, b):\n    return a + b\n```",
        )
    } else {
        Reply::completion(None, "I am not sure how to do that.")
    }
}

fn config(url: &str, dir: &Path) -> TeacherConfig {
    TeacherConfig {
        api_url: url.to_owned(),
        model_name: "fake-teacher".into(),
        max_concurrent_requests: 4,
        max_retries: 2,
        backoff_initial_ms: 1,
        backoff_max_ms: 5,
        timeout_s: 10.0,
        cache_dir: Some(dir.join("cache")),
        traces_path: dir.join("traces.jsonl"),
        ..TeacherConfig::default()
    }
}

async fn source_for(config: &TeacherConfig) -> TraceSource<HttpTeacher, impl Verifier> {
    let teacher = HttpTeacher::new(config, None).unwrap();
    TraceSource::new(config, teacher, support::verifier().await).unwrap()
}

fn cache_entries(dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(dir.join("cache")) else {
        return 0;
    };
    shards
        .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
        .sum()
}

#[tokio::test]
async fn traces_are_verified_and_a_rerun_is_served_entirely_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeTeacher::start(answer).await;
    let config = config(&server.url(), dir.path());
    let problems = problems();
    let cancel = CancellationToken::new();

    let source = source_for(&config).await;
    let summary = synthesize(&source, &problems, 4, &config.traces_path, false, &cancel)
        .await
        .unwrap();
    assert_eq!(server.requests(), 12);
    assert!(
        summary.is_complete() && summary.failures.is_empty(),
        "{summary}"
    );
    assert_eq!(
        (summary.written, summary.from_cache, summary.passed),
        (12, 0, 4)
    );
    assert_eq!(summary.teacher_requests, 12);
    assert_eq!(summary.prompt_tokens, 12 * 10);
    assert_eq!(summary.completion_tokens, 12 * 20);
    assert!((summary.pass_rate() - 4.0 / 12.0).abs() < 1e-9);

    let records = load_traces(&config.traces_path, false).unwrap();
    assert_eq!(records.len(), 12);
    let by_problem = |id: &'static str| records.iter().filter(move |r| r.problem_id == id);
    for record in by_problem("add") {
        assert!(record.passed && record.reward == 1.0, "{record:?}");
        assert_eq!(record.thinking.as_deref(), Some("Add the two numbers."));
        assert_eq!(
            record.code.as_deref().unwrap().trim_end(),
            "def add(a, b):\n    return a + b"
        );
        assert_eq!(record.teacher_model, "fake-teacher");
        assert_eq!(record.finish_reason.as_deref(), Some("stop"));
        assert_eq!(record.usage.completion_tokens, 20);
    }
    for record in by_problem("mul") {
        assert!(!record.passed && record.reward == 0.0, "{record:?}");
        assert_eq!(record.thinking.as_deref(), Some("Multiply... or add?"));
        assert!(record.raw_text.starts_with("<think>"));
        assert!(record.answer.starts_with("```python"));
    }
    for record in by_problem("neg") {
        assert_eq!(
            (record.thinking.as_ref(), record.code.as_ref()),
            (None, None)
        );
        assert_eq!(record.verdict, "no_code");
        assert!(!record.passed);
    }
    let mut samples: Vec<_> = records.iter().map(|r| r.pair()).collect();
    samples.sort();
    samples.dedup();
    assert_eq!(
        samples.len(),
        12,
        "every (problem, sample) pair exactly once"
    );
    let hashes: std::collections::HashSet<_> = records.iter().map(|r| &r.request_hash).collect();
    assert_eq!(hashes.len(), 12, "samples of one problem are cached apart");
    assert_eq!(load_traces(&config.traces_path, true).unwrap().len(), 4);

    // Same traces file: nothing left to do, nothing asked.
    let summary = synthesize(&source, &problems, 4, &config.traces_path, false, &cancel)
        .await
        .unwrap();
    assert_eq!((summary.already_done, summary.written), (12, 0));
    assert_eq!(server.requests(), 12);

    // Traces file gone, cache kept: every trace comes back without a teacher call.
    std::fs::remove_file(&config.traces_path).unwrap();
    let fresh_source = source_for(&config).await;
    let summary = synthesize(
        &fresh_source,
        &problems,
        4,
        &config.traces_path,
        false,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(server.requests(), 12, "the rerun must not call the teacher");
    assert_eq!((summary.written, summary.from_cache), (12, 12));
    assert_eq!((summary.teacher_requests, summary.prompt_tokens), (0, 0));
    let mut rerun = load_traces(&config.traces_path, false).unwrap();
    let mut first = records;
    rerun.sort_by_key(|r| r.pair());
    first.sort_by_key(|r| r.pair());
    assert_eq!(rerun, first);
}

#[tokio::test]
async fn a_400_is_not_retried_and_is_reported_with_the_problem_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeTeacher::start(|seen| {
        if seen.user_text().contains("`mul`") {
            Reply::status(400, r#"{"object":"error","message":"prompt too long"}"#)
        } else {
            answer(seen)
        }
    })
    .await;
    let config = config(&server.url(), dir.path());
    let summary = synthesize(
        &source_for(&config).await,
        &problems(),
        2,
        &config.traces_path,
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        server.requests(),
        6,
        "one request per sample: the 400s were not retried"
    );
    assert_eq!(summary.written, 4);
    assert_eq!(summary.failures.len(), 2);
    assert!(!summary.is_complete());
    for failure in &summary.failures {
        assert_eq!(failure.problem_id, "mul");
        assert!(
            failure.error.contains("problem mul sample"),
            "{}",
            failure.error
        );
        assert!(failure.error.contains("400") && failure.error.contains("prompt too long"));
    }
    // Failed samples are not written, so a rerun asks for them again (and only them).
    let records = load_traces(&config.traces_path, false).unwrap();
    assert!(records.iter().all(|r| r.problem_id != "mul"));
    let summary = synthesize(
        &source_for(&config).await,
        &problems(),
        2,
        &config.traces_path,
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((summary.already_done, summary.failures.len()), (4, 2));
    assert_eq!(server.requests(), 8);
}

/// Many problems so that a run can be stopped with work both done and in flight.
fn many_problems() -> Vec<Problem> {
    (0..10)
        .map(|i| problem(&format!("p{i}"), "add", &["assert add(1, 2) == 3"]))
        .map(|mut p| {
            p.text = format!("{} (variant {})", p.text, p.task_id);
            p
        })
        .collect()
}

fn append_torn_line(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(br#"{"problem_id":"p9","sample_index":3,"messages":[{"ro"#)
        .unwrap();
}

#[tokio::test]
async fn a_cancelled_run_resumes_without_rerequesting_finished_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let server = FakeTeacher::start(move |seen| {
        if seen.index == 15 {
            trigger.cancel();
        }
        answer(seen).with_delay(Duration::from_millis(5))
    })
    .await;
    // No response cache: the resumption must come from the traces file alone.
    let config = TeacherConfig {
        cache_dir: None,
        ..config(&server.url(), dir.path())
    };
    let problems = many_problems();
    let summary = synthesize(
        &source_for(&config).await,
        &problems,
        4,
        &config.traces_path,
        false,
        &cancel,
    )
    .await
    .unwrap();
    assert!(summary.cancelled);
    let done = summary.written;
    assert!(done > 0 && done < 40, "written {done}");
    assert_eq!(load_traces(&config.traces_path, false).unwrap().len(), done);
    append_torn_line(&config.traces_path);

    let before = server.requests();
    let summary = synthesize(
        &source_for(&config).await,
        &problems,
        4,
        &config.traces_path,
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(summary.is_complete(), "{summary}");
    assert_eq!(summary.already_done, done);
    assert_eq!(
        server.requests() - before,
        40 - done,
        "only the missing pairs are asked"
    );
    let records = load_traces(&config.traces_path, false).unwrap();
    let mut pairs: Vec<_> = records.iter().map(|r| r.pair()).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!((records.len(), pairs.len()), (40, 40));
}

#[tokio::test]
async fn a_dropped_run_loses_nothing_it_paid_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeTeacher::start(|seen| {
        // Uneven latencies so that the drop finds answers cached but not yet written.
        let delay = Duration::from_millis(2 + (seen.index as u64 * 7) % 40);
        answer(seen).with_delay(delay)
    })
    .await;
    let config = config(&server.url(), dir.path());
    let problems = many_problems();
    let source_a = source_for(&config).await;
    let never = CancellationToken::new();
    let run = synthesize(&source_a, &problems, 4, &config.traces_path, false, &never);
    assert!(
        tokio::time::timeout(Duration::from_millis(120), run)
            .await
            .is_err()
    );
    // A cache write already handed to the blocking pool finishes after the drop; let it
    // land before counting (a killed process would simply not have it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let written = load_traces(&config.traces_path, false).unwrap().len();
    append_torn_line(&config.traces_path);
    let paid_for = cache_entries(dir.path());
    // Requests still in flight at the drop reached the server but were never answered.
    assert!(paid_for <= server.requests());
    assert!(
        written < 40 && paid_for >= written,
        "written {written}, cached {paid_for}"
    );

    let before = server.requests();
    let summary = synthesize(
        &source_for(&config).await,
        &problems,
        4,
        &config.traces_path,
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(summary.is_complete(), "{summary}");
    assert_eq!(
        server.requests() - before,
        40 - paid_for,
        "nothing paid for is asked again"
    );
    assert_eq!(summary.from_cache as usize, paid_for - written);
    assert_eq!(load_traces(&config.traces_path, false).unwrap().len(), 40);
}

#[tokio::test]
async fn duplicate_problem_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("http://127.0.0.1:9/v1/chat/completions", dir.path());
    let mut problems = problems();
    problems.push(problems[0].clone());
    let err = synthesize(
        &source_for(&config).await,
        &problems,
        1,
        &config.traces_path,
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("add"), "{err}");
}
