//! The client for OpenAI-compatible `/v1/chat/completions` servers (vLLM, SGLang,
//! llama.cpp's server, TGI), and the [`Teacher`] trait the rest of the crate talks to.
//!
//! The client owns the three things that keep an expensive teacher healthy: a semaphore
//! that bounds requests in flight (held per attempt, so a request waiting out its backoff
//! leaves its slot to others), a per-request timeout, and retries with exponential backoff
//! and jitter on what is transient (connection errors, timeouts, 429, 5xx, a garbled body)
//! and never on what is not (other 4xx: the request itself is wrong).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Semaphore;

use crate::backoff::{RetryPolicy, parse_retry_after};
use crate::config::TeacherConfig;
use crate::error::{Result, TeacherError};
use crate::wire::{ChatRequest, ChatResponse};

/// How much of an error body goes into an error message.
const ERROR_BODY_CHARS: usize = 500;

/// A teacher's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherReply {
    /// The response body: an OpenAI chat completion (already checked to parse as one).
    pub body: serde_json::Value,
    /// Requests sent to get it (1 = no retry).
    pub attempts: u32,
}

/// Anything that answers chat completion requests: the HTTP client for a remote teacher,
/// or a local model. Everything above this trait (cache, parsing, verification, traces,
/// the gRPC service) is the same for both.
pub trait Teacher: Send + Sync + 'static {
    /// Where the answers come from, for logs and error messages.
    fn describe(&self) -> String;

    /// Answers one request; the body must be an OpenAI chat completion.
    fn chat(&self, request: &ChatRequest) -> impl Future<Output = Result<TeacherReply>> + Send;
}

/// HTTP client for one OpenAI-compatible teacher endpoint. Cheap to clone; clones share
/// the connection pool and the concurrency limit.
#[derive(Debug, Clone)]
pub struct HttpTeacher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    api_key: Option<String>,
    permits: Semaphore,
    policy: RetryPolicy,
}

/// Why one attempt failed, before deciding whether to retry.
#[derive(Debug)]
enum Failure {
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    Transport {
        reason: String,
        timed_out: bool,
    },
    Malformed {
        reason: String,
    },
}

impl Failure {
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Status { status, .. } => *status == 429 || *status >= 500,
            Failure::Transport { .. } | Failure::Malformed { .. } => true,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn into_error(self, endpoint: &reqwest::Url, attempts: u32) -> TeacherError {
        let endpoint = endpoint.to_string();
        match self {
            Failure::Status { status, body, .. } => TeacherError::Status {
                endpoint,
                status,
                attempts,
                body,
            },
            Failure::Transport { reason, timed_out } => TeacherError::Transport {
                endpoint,
                attempts,
                reason,
                timed_out,
            },
            Failure::Malformed { reason } => TeacherError::MalformedResponse {
                endpoint,
                attempts,
                reason,
            },
        }
    }
}

impl HttpTeacher {
    /// A client for `config.api_url`, sending `api_key` (if any) as a bearer token.
    pub fn new(config: &TeacherConfig, api_key: Option<String>) -> Result<Self> {
        config.validate()?;
        let endpoint =
            reqwest::Url::parse(&config.api_url).map_err(|err| TeacherError::Config {
                field: "api_url",
                reason: err.to_string(),
            })?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.connect_timeout())
            .pool_max_idle_per_host(config.max_concurrent_requests)
            .tcp_nodelay(true)
            .user_agent(concat!("tgrpo-teacher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| TeacherError::Config {
                field: "api_url",
                reason: format!("cannot build an HTTP client: {err}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint,
                api_key,
                permits: Semaphore::new(config.max_concurrent_requests),
                policy: RetryPolicy::from_config(config),
            }),
        })
    }

    /// The chat completions URL.
    pub fn endpoint(&self) -> &reqwest::Url {
        &self.inner.endpoint
    }

    /// The models the server serves (`GET …/v1/models`), for connectivity checks. One
    /// attempt, no retries: a check should report what it sees.
    pub async fn list_models(&self) -> Result<Vec<String>> {
        let mut url = self.inner.endpoint.clone();
        let path = url.path().trim_end_matches('/');
        let base = path.strip_suffix("/chat/completions").unwrap_or(path);
        url.set_path(&format!("{base}/models"));
        let mut builder = self.inner.http.get(url.clone());
        if let Some(key) = &self.inner.api_key {
            builder = builder.bearer_auth(key);
        }
        let failure = |reason: String| TeacherError::MalformedResponse {
            endpoint: url.to_string(),
            attempts: 1,
            reason,
        };
        let response = builder
            .send()
            .await
            .map_err(|err| TeacherError::Transport {
                endpoint: url.to_string(),
                attempts: 1,
                timed_out: err.is_timeout(),
                reason: error_chain(&err),
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(TeacherError::Status {
                endpoint: url.to_string(),
                status: status.as_u16(),
                attempts: 1,
                body: snippet(&body),
            });
        }
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|err| failure(err.to_string()))?;
        let models = value
            .get("data")
            .and_then(|data| data.as_array())
            .ok_or_else(|| failure("no `data` list".to_owned()))?
            .iter()
            .filter_map(|model| model.get("id").and_then(|id| id.as_str()))
            .map(str::to_owned)
            .collect();
        Ok(models)
    }

    async fn attempt(&self, body: &[u8]) -> std::result::Result<serde_json::Value, Failure> {
        let inner = &self.inner;
        let _permit = inner
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut builder = inner
            .http
            .post(inner.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &inner.api_key {
            builder = builder.bearer_auth(key);
        }
        let transport = |err: reqwest::Error| Failure::Transport {
            timed_out: err.is_timeout(),
            reason: error_chain(&err),
        };
        let response = builder.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(Failure::Status {
                status: status.as_u16(),
                body: snippet(&String::from_utf8_lossy(&bytes)),
                retry_after,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|err| Failure::Malformed {
                reason: format!("{err} in {:?}", snippet(&String::from_utf8_lossy(&bytes))),
            })?;
        ChatResponse::from_value(&value).map_err(|reason| Failure::Malformed { reason })?;
        Ok(value)
    }
}

impl Teacher for HttpTeacher {
    fn describe(&self) -> String {
        self.inner.endpoint.to_string()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<TeacherReply> {
        let body = serde_json::to_vec(request).expect("a ChatRequest always serialises");
        let policy = self.inner.policy;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.attempt(&body).await {
                Ok(body) => return Ok(TeacherReply { body, attempts }),
                Err(failure) => failure,
            };
            let retries_done = attempts - 1;
            if !failure.is_retryable() || retries_done >= policy.max_retries {
                return Err(failure.into_error(&self.inner.endpoint, attempts));
            }
            let delay = policy.delay(retries_done, failure.retry_after(), &mut rand::rng());
            tracing::debug!(
                endpoint = %self.inner.endpoint,
                attempt = attempts,
                ?delay,
                failure = ?failure,
                "teacher request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// The error and its causes on one line (reqwest's Display hides the interesting part,
/// such as "connection refused", in its sources).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn snippet(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(ERROR_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_is_bounded_on_char_boundaries() {
        let long = "é".repeat(2 * ERROR_BODY_CHARS);
        let cut = snippet(&long);
        assert_eq!(cut.chars().count(), ERROR_BODY_CHARS + 1);
        assert_eq!(snippet("  short \n"), "short");
    }

    #[test]
    fn retry_classification() {
        let status = |status| Failure::Status {
            status,
            body: String::new(),
            retry_after: None,
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 408, 413, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        assert!(
            Failure::Malformed {
                reason: String::new()
            }
            .is_retryable()
        );
        assert!(
            Failure::Transport {
                reason: String::new(),
                timed_out: true
            }
            .is_retryable()
        );
    }
}
