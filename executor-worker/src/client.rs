//! A client that balances `Score` calls over several executor endpoints and retries a
//! failed call on another endpoint. Scoring is a pure function of the request, so a
//! retry is always safe; only a request the executor calls invalid is not retried.
//!
//! Balancing: each call goes to the healthy endpoint with the fewest calls in flight
//! (round-robin among ties). An endpoint whose call failed with a transport error,
//! `UNAVAILABLE` (down or draining) or `RESOURCE_EXHAUSTED` (queue full) is skipped for
//! a cool-down; when every endpoint is cooling down, the one that recovers first is
//! tried after an exponential backoff with jitter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tgrpo_proto::executor::executor_client::ExecutorClient;
use tgrpo_proto::executor::{ScoreRequest, ScoreResponse};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::error::ExecutorError;

/// Settings of a [`BalancedClient`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Attempts per request across all endpoints before giving up.
    pub max_attempts: usize,
    /// First retry delay; doubles per attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    /// Largest retry delay.
    pub backoff_max_ms: u64,
    /// How long an endpoint that failed is skipped.
    pub cooldown_ms: u64,
    /// TCP connect timeout.
    pub connect_timeout_s: f64,
    /// Added to a request's own time limit to get the deadline of one attempt (queueing
    /// and transfer time).
    pub deadline_margin_s: f64,
    /// Time limit assumed for requests that name none (the executors' default).
    pub default_request_timeout_s: f64,
    /// Calls in flight per endpoint when scoring many requests.
    pub max_in_flight_per_endpoint: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            backoff_initial_ms: 50,
            backoff_max_ms: 2000,
            cooldown_ms: 1000,
            connect_timeout_s: 2.0,
            deadline_margin_s: 60.0,
            default_request_timeout_s: 10.0,
            max_in_flight_per_endpoint: 32,
        }
    }
}

impl ClientConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ExecutorError> {
        let bad = |field: &str, reason: &str| ExecutorError::InvalidConfig {
            field: format!("executor_client.{field}"),
            reason: reason.to_string(),
        };
        if self.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1"));
        }
        if self.max_in_flight_per_endpoint == 0 {
            return Err(bad("max_in_flight_per_endpoint", "must be at least 1"));
        }
        for (field, value) in [
            ("connect_timeout_s", self.connect_timeout_s),
            ("deadline_margin_s", self.deadline_margin_s),
            ("default_request_timeout_s", self.default_request_timeout_s),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(field, "must be a positive number"));
            }
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(bad("backoff_initial_ms", "exceeds backoff_max_ms"));
        }
        Ok(())
    }
}

struct EndpointState {
    address: String,
    client: ExecutorClient<Channel>,
    in_flight: AtomicUsize,
    cooldown_until: std::sync::Mutex<Option<Instant>>,
}

impl EndpointState {
    fn cooling_until(&self) -> Option<Instant> {
        let guard = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.filter(|until| *until > Instant::now())
    }

    fn set_cooldown(&self, period: Duration) {
        let mut guard = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = Some(Instant::now() + period);
    }

    fn clear_cooldown(&self) {
        let mut guard = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = None;
    }
}

/// Balances over executor endpoints; cheap to clone (one set of connections shared by
/// every clone).
#[derive(Clone)]
pub struct BalancedClient {
    endpoints: Arc<Vec<EndpointState>>,
    next: Arc<AtomicUsize>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for BalancedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<&str> = self.endpoints.iter().map(|e| e.address.as_str()).collect();
        f.debug_struct("BalancedClient")
            .field("endpoints", &addresses)
            .finish()
    }
}

/// Decrements an endpoint's in-flight count when the call ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BalancedClient {
    /// A client for `endpoints` (`host:port` or `http://host:port`). Connections are
    /// made lazily, so an executor that is down at start-up is simply skipped.
    pub fn new(endpoints: &[String], config: ClientConfig) -> Result<Self, ExecutorError> {
        config.validate()?;
        if endpoints.is_empty() {
            return Err(ExecutorError::NoEndpoints);
        }
        let states = endpoints
            .iter()
            .map(|raw| {
                let address = raw.trim().to_string();
                let uri = if address.contains("://") {
                    address.clone()
                } else {
                    format!("http://{address}")
                };
                let endpoint =
                    Endpoint::from_shared(uri).map_err(|err| ExecutorError::BadEndpoint {
                        endpoint: address.clone(),
                        reason: err.to_string(),
                    })?;
                let channel = endpoint
                    .connect_timeout(Duration::from_secs_f64(config.connect_timeout_s))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .connect_lazy();
                Ok(EndpointState {
                    address,
                    client: ExecutorClient::new(channel)
                        .max_decoding_message_size(256 << 20)
                        .max_encoding_message_size(256 << 20),
                    in_flight: AtomicUsize::new(0),
                    cooldown_until: std::sync::Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, ExecutorError>>()?;
        Ok(Self {
            endpoints: Arc::new(states),
            next: Arc::new(AtomicUsize::new(0)),
            config: Arc::new(config),
        })
    }

    /// The endpoints this client balances over.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.address.clone()).collect()
    }

    /// How many requests `score_many` keeps in flight.
    pub fn concurrency(&self) -> usize {
        self.config.max_in_flight_per_endpoint * self.endpoints.len()
    }

    /// Picks an endpoint: the least loaded one not cooling down, else the one whose
    /// cool-down ends first (with how long to wait for it).
    fn pick(&self, avoid: Option<usize>) -> (usize, Option<Instant>) {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        let mut soonest: Option<(usize, Instant)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            let endpoint = &self.endpoints[index];
            match endpoint.cooling_until() {
                Some(until) => {
                    if soonest.is_none_or(|(_, best_until)| until < best_until) {
                        soonest = Some((index, until));
                    }
                }
                None => {
                    if Some(index) == avoid && count > 1 {
                        continue;
                    }
                    let load = endpoint.in_flight.load(Ordering::Relaxed);
                    if best.is_none_or(|(_, best_load)| load < best_load) {
                        best = Some((index, load));
                    }
                }
            }
        }
        if let Some((index, _)) = best {
            return (index, None);
        }
        if let Some(index) = avoid.filter(|&index| self.endpoints[index].cooling_until().is_none())
        {
            return (index, None);
        }
        let (index, until) = soonest.expect("at least one endpoint");
        (index, Some(until))
    }

    fn backoff(&self, attempt: usize) -> Duration {
        let exponent = attempt.min(16) as u32;
        let base = self
            .config
            .backoff_initial_ms
            .saturating_mul(1_u64 << exponent)
            .min(self.config.backoff_max_ms);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    /// Scores one request on some endpoint, retrying elsewhere on failure.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse, ExecutorError> {
        let request_timeout = request
            .timeout_s
            .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
            .unwrap_or(self.config.default_request_timeout_s);
        let deadline = Duration::from_secs_f64(request_timeout + self.config.deadline_margin_s);
        let cooldown = Duration::from_millis(self.config.cooldown_ms);
        let mut last_failure: Option<(String, String)> = None;
        let mut previous: Option<usize> = None;
        for attempt in 0..self.config.max_attempts {
            let (index, wait_until) = self.pick(previous);
            if attempt > 0 {
                let mut delay = self.backoff(attempt - 1);
                if let Some(until) = wait_until {
                    delay = delay.max(until.saturating_duration_since(Instant::now()));
                }
                tokio::time::sleep(delay).await;
            }
            let endpoint = &self.endpoints[index];
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(&endpoint.in_flight);
            let mut client = endpoint.client.clone();
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(deadline);
            let result = tokio::time::timeout(deadline, client.score(call)).await;
            let status = match result {
                Ok(Ok(response)) => {
                    endpoint.clear_cooldown();
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded("no answer within the deadline"),
            };
            if status.code() == Code::InvalidArgument {
                return Err(ExecutorError::Rejected {
                    endpoint: endpoint.address.clone(),
                    message: status.message().to_string(),
                });
            }
            tracing::debug!(
                endpoint = %endpoint.address,
                id = %request.id,
                attempt,
                code = ?status.code(),
                message = %status.message(),
                "executor call failed; retrying elsewhere"
            );
            endpoint.set_cooldown(if status.code() == Code::ResourceExhausted {
                cooldown / 4
            } else {
                cooldown
            });
            last_failure = Some((
                endpoint.address.clone(),
                format!("{:?}: {}", status.code(), status.message()),
            ));
            previous = Some(index);
        }
        let (endpoint, status) = last_failure.unwrap_or_default();
        Err(ExecutorError::AttemptsExhausted {
            attempts: self.config.max_attempts,
            endpoint,
            status,
        })
    }

    /// Scores many requests concurrently; responses come back in request order.
    pub async fn score_many(
        &self,
        requests: Vec<ScoreRequest>,
    ) -> Result<Vec<ScoreResponse>, ExecutorError> {
        score_many_with(requests, self.concurrency(), |request| self.score(request)).await
    }
}

/// Runs `score` over `requests` with at most `concurrency` in flight, returning the
/// responses in request order (or the first error).
pub(crate) async fn score_many_with<F, Fut>(
    requests: Vec<ScoreRequest>,
    concurrency: usize,
    score: F,
) -> Result<Vec<ScoreResponse>, ExecutorError>
where
    F: Fn(ScoreRequest) -> Fut,
    Fut: std::future::Future<Output = Result<ScoreResponse, ExecutorError>>,
{
    let count = requests.len();
    let mut slots: Vec<Option<ScoreResponse>> = vec![None; count];
    let mut results = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(index, request)| {
            let future = score(request);
            async move { (index, future.await) }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((index, result)) = results.next().await {
        slots[index] = Some(result?);
    }
    Ok(slots
        .into_iter()
        .map(|slot| slot.expect("every request answered"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_fields() {
        ClientConfig::default().validate().unwrap();
        let config = ClientConfig {
            max_attempts: 0,
            ..ClientConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
    }

    #[tokio::test]
    async fn bad_endpoints_are_named() {
        let err =
            BalancedClient::new(&["http://[bad".to_string()], ClientConfig::default()).unwrap_err();
        assert!(err.to_string().contains("[bad"), "{err}");
        let err = BalancedClient::new(&[], ClientConfig::default()).unwrap_err();
        assert!(matches!(err, ExecutorError::NoEndpoints));
    }

    #[tokio::test]
    async fn picking_prefers_healthy_and_least_loaded() {
        let endpoints = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let client = BalancedClient::new(&endpoints, ClientConfig::default()).unwrap();
        client.endpoints[0].in_flight.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(client.pick(None).0, 1);
        }
        client.endpoints[1].set_cooldown(Duration::from_secs(60));
        assert_eq!(client.pick(None), (0, None));
        client.endpoints[0].set_cooldown(Duration::from_secs(30));
        let (index, wait) = client.pick(None);
        assert_eq!(index, 0, "the endpoint recovering first");
        assert!(wait.is_some());
    }

    #[tokio::test]
    async fn score_many_keeps_request_order() {
        let requests: Vec<ScoreRequest> = (0..20)
            .map(|i| ScoreRequest {
                id: i.to_string(),
                ..ScoreRequest::default()
            })
            .collect();
        let responses = score_many_with(requests, 4, |request| async move {
            let delay = 20 - request.id.parse::<u64>().unwrap();
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok(ScoreResponse {
                id: request.id,
                ..ScoreResponse::default()
            })
        })
        .await
        .unwrap();
        let ids: Vec<String> = responses.into_iter().map(|r| r.id).collect();
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(ids, expected);
    }
}
