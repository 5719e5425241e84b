//! A fake OpenAI-compatible teacher for tests and benchmarks: an axum server on
//! 127.0.0.1:0 that answers `/v1/chat/completions` like vLLM with a reasoning parser
//! (`reasoning_content` + `content`, `usage`), driven by a script the test supplies, and
//! that counts what it sees (requests, concurrency in flight, bodies, headers).

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// What the fake sends back for one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Reply {
    /// A vLLM-style completion with the reasoning parser on.
    pub fn completion(reasoning: Option<&str>, content: &str) -> Self {
        let mut message = json!({"role": "assistant", "content": content});
        if let Some(reasoning) = reasoning {
            message["reasoning_content"] = json!(reasoning);
        }
        let body = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": "fake-teacher",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
        });
        Self::status(200, &body.to_string())
    }

    /// Any status with a raw body.
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Arrival order, from 0.
    pub index: usize,
    pub body: Value,
    pub authorization: Option<String>,
}

impl Seen {
    /// The last user message's text.
    pub fn user_text(&self) -> String {
        self.body["messages"]
            .as_array()
            .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|message| message["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

type Script = dyn Fn(&Seen) -> Reply + Send + Sync;

/// Counters the test asserts on.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
}

struct Shared {
    counters: Arc<Counters>,
    script: Box<Script>,
}

/// A running fake teacher; stops when dropped.
pub struct FakeTeacher {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeTeacher {
    /// Starts the fake on 127.0.0.1:0 with `script` deciding each reply.
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script)
    }

    /// Serves on an already bound listener.
    pub fn serve(
        listener: tokio::net::TcpListener,
        script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            counters: counters.clone(),
            script: Box::new(script),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(shared);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            counters,
            stop: Some(stop),
        }
    }

    /// The chat completions URL.
    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.counters.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.counters.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeTeacher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Decrements the in-flight count however the handler ends (including a client that
/// hung up, which drops the handler future).
struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let counters = &shared.counters;
    let index = counters.requests.fetch_add(1, Ordering::SeqCst);
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(counters.clone());
    let body: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    let seen = Seen {
        index,
        body,
        authorization: headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    };
    counters.seen.lock().unwrap().push(seen.clone());
    let reply = (shared.script)(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

async fn models() -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]}))
        .into_response()
}

/// The verifier the tests score traces with: the real executor, an in-process pool of
/// sandboxes, with a uid range no other test process uses.
pub async fn verifier() -> tgrpo_executor::Scorer {
    let config = tgrpo_executor::ExecutorConfig {
        slots: 2,
        uid_base: 3_000_000 + (std::process::id() % 100_000) * 64,
        ..tgrpo_executor::ExecutorConfig::default()
    };
    tgrpo_executor::Scorer::local(config)
        .await
        .expect("the executor's sandbox pool starts (run as root, with /usr/bin/python3)")
}
