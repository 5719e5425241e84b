//! The gRPC service over real loopback connections: concurrent clients, streaming,
//! backpressure, health, graceful drain, and the balancing client losing an executor
//! mid-run.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tgrpo_executor::proto::executor_client::ExecutorClient;
use tgrpo_executor::proto::{ScoreRequest, ScoreResponse, Verdict};
use tgrpo_executor::{BalancedClient, ClientConfig, ExecutorConfig, ExecutorError, requests};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Server {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ExecutorError>>,
}

async fn start_server(config: ExecutorConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tgrpo_executor::service::run(
        config,
        listener,
        shutdown.clone(),
    ));
    // Ready once health answers SERVING (the pool starts first).
    let mut health = loop {
        if let Ok(client) = health_client(address).await {
            break client;
        }
        assert!(!task.is_finished(), "the executor exited while starting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for _ in 0..500 {
        let status = health
            .check(HealthCheckRequest {
                service: "tgrpo.executor.v1.Executor".into(),
            })
            .await;
        if status.is_ok_and(|s| s.into_inner().status() == ServingStatus::Serving) {
            return Server {
                address,
                shutdown,
                task,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the executor never became healthy");
}

async fn health_client(
    address: SocketAddr,
) -> Result<HealthClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("valid uri")
        .connect()
        .await?;
    Ok(HealthClient::new(channel))
}

/// A request whose verdict is known from its id: `pass-N` returns the right answer,
/// `fail-N` a wrong one; `sleep_s` makes the function slow.
fn known_request(id: &str, n: usize, sleep_s: f64) -> ScoreRequest {
    let offset = if id.starts_with("pass") { 0 } else { 1 };
    let code = format!(
        "import time\ndef f(x):\n    time.sleep({sleep_s})\n    return x * {n} + {offset}\n"
    );
    let tests = [
        format!("assert f(2) == {}", 2 * n),
        format!("assert f(3) == {}", 3 * n),
    ];
    requests::mbpp(id, code, tests, "")
}

fn expected_verdict(id: &str) -> Verdict {
    if id.starts_with("pass") {
        Verdict::Passed
    } else {
        Verdict::Failed
    }
}

fn check(response: &ScoreResponse) {
    assert_eq!(
        response.verdict(),
        expected_verdict(&response.id),
        "{}: {}",
        response.id,
        response.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_all_get_correct_verdicts() {
    let server = start_server(common::config(2)).await;
    let mut clients = Vec::new();
    for client_index in 0..4 {
        let address = server.address;
        clients.push(tokio::spawn(async move {
            let client = ExecutorClient::connect(format!("http://{address}"))
                .await
                .unwrap();
            let calls = (0..15).map(|i| {
                let mut client = client.clone();
                let id = format!(
                    "{}-{client_index}-{i}",
                    if (i + client_index) % 3 == 0 {
                        "fail"
                    } else {
                        "pass"
                    }
                );
                async move {
                    client
                        .score(known_request(&id, i + 1, 0.0))
                        .await
                        .map(|response| response.into_inner())
                }
            });
            futures::future::join_all(calls).await
        }));
    }
    let mut answered = 0;
    for client in clients {
        for response in client.await.unwrap() {
            check(&response.expect("admitted: 60 calls fit the default queue"));
            answered += 1;
        }
    }
    assert_eq!(answered, 60);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn score_batch_streams_every_response() {
    let server = start_server(common::config(2)).await;
    let mut client = ExecutorClient::connect(format!("http://{}", server.address))
        .await
        .unwrap();
    let requests: Vec<ScoreRequest> = (0..24)
        .map(|i| {
            let id = format!("{}-{i}", if i % 4 == 0 { "fail" } else { "pass" });
            // Earlier requests are slower, so answers arrive out of request order.
            known_request(&id, i + 1, if i < 4 { 0.3 } else { 0.0 })
        })
        .collect();
    let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    let mut stream = client
        .score_batch(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();
    while let Some(response) = stream.message().await.unwrap() {
        check(&response);
        seen.insert(response.id.clone(), response);
    }
    assert_eq!(seen.len(), ids.len());
    for id in &ids {
        assert!(seen.contains_key(id), "no response for {id}");
    }
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_resource_exhausted() {
    let config = ExecutorConfig {
        queue_capacity: 0,
        ..common::config(1)
    };
    let server = start_server(config).await;
    let client = ExecutorClient::connect(format!("http://{}", server.address))
        .await
        .unwrap();
    let mut slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .score(known_request("pass-slow", 1, 1.0))
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = client;
    let rejected = client
        .score(known_request("pass-rejected", 2, 0.0))
        .await
        .unwrap_err();
    assert_eq!(rejected.code(), Code::ResourceExhausted, "{rejected:?}");
    check(&slow.await.unwrap().unwrap());
    // Room again once the slow one is done.
    check(
        &client
            .score(known_request("pass-after", 3, 0.0))
            .await
            .unwrap()
            .into_inner(),
    );
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_in_flight_work() {
    let server = start_server(common::config(1)).await;
    let mut client = ExecutorClient::connect(format!("http://{}", server.address))
        .await
        .unwrap();
    let mut health = health_client(server.address).await.unwrap();
    let mut in_flight_client = client.clone();
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .score(known_request("pass-in-flight", 4, 1.0))
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: health says so, new calls are refused with a retryable code.
    if let Ok(status) = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        assert_eq!(status.into_inner().status(), ServingStatus::NotServing);
    }
    if let Err(status) = client.score(known_request("pass-late", 5, 0.0)).await {
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{status:?}"
        );
    }
    // The call admitted before SIGTERM completes with its real verdict.
    check(&in_flight.await.unwrap().expect("in-flight call finished"));
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balancing_client_loses_an_executor_mid_run() {
    let first = start_server(common::config(2)).await;
    let second = start_server(common::config(2)).await;
    let client = BalancedClient::new(
        &[first.address.to_string(), second.address.to_string()],
        ClientConfig {
            max_in_flight_per_endpoint: 4,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let requests: Vec<ScoreRequest> = (0..80)
        .map(|i| {
            let id = format!("{}-{i}", if i % 5 == 0 { "fail" } else { "pass" });
            known_request(&id, i + 1, 0.05)
        })
        .collect();
    let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    let scoring = {
        let client = client.clone();
        tokio::spawn(async move { client.score_many(requests).await })
    };
    // Kill the first executor abruptly while requests are in flight on it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!scoring.is_finished(), "the run ended before the kill");
    first.task.abort();
    let responses = scoring.await.unwrap().expect("no request lost");
    assert_eq!(responses.len(), ids.len());
    for (response, id) in responses.iter().zip(&ids) {
        assert_eq!(&response.id, id, "responses come back in request order");
        check(response);
    }
    // And the survivor keeps serving the same client.
    check(
        &client
            .score(known_request("pass-after", 7, 0.0))
            .await
            .unwrap(),
    );
    second.shutdown.cancel();
    second.task.await.unwrap().unwrap();
}
