//! `tgrpo --metrics-listen ADDR executor ...`: the Prometheus endpoint of a real executor
//! process, scraped over HTTP before and after Score calls.

mod support;

use std::collections::BTreeMap;

use support::{executor, free_address, http_get};
use tgrpo_executor::proto::ScoreRequest;
use tgrpo_executor::{ClientConfig, Scorer};

/// Samples of a text exposition: `name{labels}` → value.
fn parse(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn request(id: &str, code: &str) -> ScoreRequest {
    ScoreRequest {
        id: id.into(),
        code: code.into(),
        tests: vec!["assert add(2, 3) == 5".into()],
        ..ScoreRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_serves_metrics_that_move_with_its_work() {
    let grpc = free_address();
    let metrics = free_address();
    let _executor = executor(&grpc, 0, &["--metrics-listen", &metrics]);

    let (status, head, body) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    let before = parse(&body);
    assert_eq!(http_get(&metrics, "/elsewhere").0, 404);

    let scorer = Scorer::remote(std::slice::from_ref(&grpc), ClientConfig::default()).unwrap();
    let passed = scorer
        .score(request("ok", "def add(a, b):\n    return a + b\n"))
        .await
        .unwrap();
    let failed = scorer
        .score(request("wrong", "def add(a, b):\n    return a - b\n"))
        .await
        .unwrap();
    assert_eq!((passed.reward, failed.reward), (1.0, 0.0));

    let (_, _, body) = http_get(&metrics, "/metrics");
    let after = parse(&body);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved("tgrpo_executor_requests_total"), 2.0, "{body}");
    assert_eq!(
        moved("tgrpo_executor_verdicts_total{verdict=\"passed\"}"),
        1.0,
        "{body}"
    );
    assert_eq!(
        moved("tgrpo_executor_verdicts_total{verdict=\"failed\"}"),
        1.0,
        "{body}"
    );
    assert_eq!(
        moved("tgrpo_executor_execution_seconds_count"),
        2.0,
        "{body}"
    );
    assert!(
        moved("tgrpo_executor_execution_seconds_sum") > 0.0,
        "{body}"
    );
    assert!(
        after.contains_key("tgrpo_executor_execution_seconds_bucket{le=\"+Inf\"}"),
        "a real histogram: {body}"
    );
    // Nothing is running or waiting once both answers are in.
    assert_eq!(sample(&after, "tgrpo_executor_in_flight"), 0.0, "{body}");
    assert_eq!(sample(&after, "tgrpo_executor_queue_depth"), 0.0, "{body}");
    assert_eq!(
        sample(&after, "tgrpo_executor_rejected_total"),
        0.0,
        "{body}"
    );
}

#[test]
fn a_metrics_address_that_is_taken_fails_the_command_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = support::tgrpo(&["--metrics-listen", &address, "config"]);
    assert!(!output.status.success(), "{}", support::describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--metrics-listen {address}")),
        "{stderr}"
    );
}
