//! The gRPC teacher proxy on loopback: verified traces on-line, cached repeats, the meter,
//! bad requests refused, health, and a clean shutdown.

mod support;

use support::{FakeTeacher, Reply};
use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_proto::teacher as pb;
use tgrpo_proto::teacher::teacher_client::TeacherClient;
use tgrpo_teacher::server::{problem_from_proto, problem_to_proto};
use tgrpo_teacher::{HttpTeacher, TeacherConfig, TraceSource};
use tokio_util::sync::CancellationToken;

fn add_problem() -> Problem {
    Problem {
        task_id: "add".into(),
        text: "Write a function `add`.".into(),
        reference: None,
        tests: vec!["assert add(1, 2) == 3".into()],
        setup_code: String::new(),
        format: TestFormat::Mbpp,
        entry_point: Some("add".into()),
        prompt: None,
    }
}

#[tokio::test]
async fn on_line_traces_are_verified_cached_and_metered() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = FakeTeacher::start(|seen| {
        if seen.user_text().contains("`add`") {
            Reply::completion(
                Some("easy"),
                "```python\ndef add(a, b):\n    return a + b\n```",
            )
        } else {
            Reply::status(400, "bad problem")
        }
    })
    .await;
    let config = TeacherConfig {
        api_url: teacher.url(),
        model_name: "fake-teacher".into(),
        num_samples_per_problem: 3,
        backoff_initial_ms: 1,
        backoff_max_ms: 2,
        cache_dir: Some(dir.path().join("cache")),
        ..TeacherConfig::default()
    };
    let source = TraceSource::new(
        &config,
        HttpTeacher::new(&config, None).unwrap(),
        support::verifier().await,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tgrpo_teacher::server::run(
        source,
        listener,
        shutdown.clone(),
    ));
    let mut client = TeacherClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // Default sample count from the config.
    let response = client
        .generate_traces(pb::TracesRequest {
            problem: Some(problem_to_proto(&add_problem())),
            num_samples: 0,
            first_sample: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.errors.is_empty());
    let samples: Vec<u32> = response.traces.iter().map(|t| t.sample_index).collect();
    assert_eq!(samples, vec![0, 1, 2]);
    for trace in &response.traces {
        assert!(trace.passed && !trace.from_cache, "{trace:?}");
        assert_eq!(trace.thinking.as_deref(), Some("easy"));
        assert_eq!(trace.verdict, "passed");
    }
    assert_eq!(teacher.requests(), 3);

    // Overlapping sample indices: 1 and 2 are cached, 3 is new.
    let response = client
        .generate_traces(pb::TracesRequest {
            problem: Some(problem_to_proto(&add_problem())),
            num_samples: 3,
            first_sample: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let cached: Vec<bool> = response.traces.iter().map(|t| t.from_cache).collect();
    assert_eq!(cached, vec![true, true, false]);
    assert_eq!(teacher.requests(), 4);

    // A teacher 400 comes back per sample, naming the problem.
    let mut other = add_problem();
    other.task_id = "sub".into();
    other.text = "Write a function `sub`.".into();
    let response = client
        .generate_traces(pb::TracesRequest {
            problem: Some(problem_to_proto(&other)),
            num_samples: 1,
            first_sample: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.traces.is_empty());
    assert!(
        response.errors[0].error.contains("problem sub"),
        "{:?}",
        response.errors
    );
    assert!(response.errors[0].error.contains("400"));

    let stats = client
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.teacher_requests, 5);
    assert_eq!((stats.cache_hits, stats.traces, stats.passed), (2, 6, 6));
    assert_eq!((stats.failures, stats.retries), (1, 0));
    assert_eq!(stats.completion_tokens, 4 * 20);
    assert_eq!(stats.max_concurrent_requests, 32);

    // Malformed requests are refused before anything is asked.
    let missing = client
        .generate_traces(pb::TracesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    let too_many = client
        .generate_traces(pb::TracesRequest {
            problem: Some(problem_to_proto(&add_problem())),
            num_samples: 100_000,
            first_sample: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert_eq!(teacher.requests(), 5);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tgrpo.teacher.v1.Teacher".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    drop(client);
    drop(health);
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the proxy stops on shutdown")
        .unwrap()
        .unwrap();
}

#[test]
fn problems_round_trip_through_proto() {
    let mut problem = add_problem();
    problem.format = TestFormat::HumanEval;
    problem.prompt = Some("def add(a, b):\n".into());
    assert_eq!(
        problem_from_proto(problem_to_proto(&problem)).unwrap(),
        problem
    );
    let mut bad = problem_to_proto(&problem);
    bad.format = 42;
    assert_eq!(
        problem_from_proto(bad).unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}
