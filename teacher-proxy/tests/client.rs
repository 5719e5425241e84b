//! The HTTP client against a fake vLLM on loopback: concurrency limit, retries (429 with
//! Retry-After, 5xx, garbled bodies, refused connections), no retry on other 4xx, timeouts.

mod support;

use std::time::{Duration, Instant};

use support::{FakeTeacher, Reply};
use tgrpo_teacher::wire::{ChatMessage, ChatRequest, ChatResponse, ChatTemplateKwargs};
use tgrpo_teacher::{HttpTeacher, Teacher, TeacherConfig, TeacherError};

fn config(url: &str) -> TeacherConfig {
    TeacherConfig {
        api_url: url.to_owned(),
        model_name: "fake-teacher".into(),
        max_retries: 3,
        backoff_initial_ms: 1,
        backoff_max_ms: 5,
        timeout_s: 5.0,
        cache_dir: None,
        ..TeacherConfig::default()
    }
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        model: "fake-teacher".into(),
        messages: vec![ChatMessage::user(text)],
        temperature: 0.7,
        top_p: 0.8,
        presence_penalty: 1.5,
        max_tokens: 64,
        stream: false,
        seed: None,
        chat_template_kwargs: Some(ChatTemplateKwargs {
            enable_thinking: true,
        }),
    }
}

fn ok() -> Reply {
    Reply::completion(Some("thinking"), "```python\nx = 1\n```")
}

#[tokio::test]
async fn concurrency_seen_at_the_server_never_exceeds_the_limit() {
    let server = FakeTeacher::start(|_| ok().with_delay(Duration::from_millis(30))).await;
    let teacher = HttpTeacher::new(
        &TeacherConfig {
            max_concurrent_requests: 4,
            ..config(&server.url())
        },
        None,
    )
    .unwrap();
    let calls = (0..40).map(|i| {
        let teacher = teacher.clone();
        async move { teacher.chat(&request(&format!("q{i}"))).await }
    });
    for reply in futures::future::join_all(calls).await {
        assert_eq!(reply.unwrap().attempts, 1);
    }
    assert_eq!(server.requests(), 40);
    assert!(
        server.max_in_flight() <= 4,
        "saw {}",
        server.max_in_flight()
    );
    // The limit is reached, not just respected by running one at a time.
    assert!(
        server.max_in_flight() >= 3,
        "saw {}",
        server.max_in_flight()
    );
}

#[tokio::test]
async fn the_request_is_the_seed_shape_with_the_api_key() {
    let server = FakeTeacher::start(|_| ok()).await;
    let teacher = HttpTeacher::new(&config(&server.url()), Some("sk-test".into())).unwrap();
    teacher.chat(&request("hello")).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test"));
    let body = &seen[0].body;
    assert_eq!(body["model"], "fake-teacher");
    assert_eq!(body["temperature"], 0.7);
    assert_eq!(body["top_p"], 0.8);
    assert_eq!(body["presence_penalty"], 1.5);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["chat_template_kwargs"]["enable_thinking"], true);
    assert_eq!(seen[0].user_text(), "hello");
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_the_wait() {
    let server = FakeTeacher::start(|seen| match seen.index {
        0 => Reply::status(429, r#"{"error":"busy"}"#).with_header("retry-after", "1"),
        _ => ok(),
    })
    .await;
    let teacher = HttpTeacher::new(&config(&server.url()), None).unwrap();
    let started = Instant::now();
    let reply = teacher.chat(&request("q")).await.unwrap();
    assert_eq!(reply.attempts, 2);
    assert_eq!(server.requests(), 2);
    // The backoff alone is at most 5 ms: only Retry-After explains a one-second wait.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let server = FakeTeacher::start(|seen| match seen.index {
        0 => Reply::status(500, "boom"),
        1 => Reply::status(503, "loading"),
        _ => ok(),
    })
    .await;
    let teacher = HttpTeacher::new(&config(&server.url()), None).unwrap();
    let reply = teacher.chat(&request("q")).await.unwrap();
    assert_eq!(reply.attempts, 3);
    assert_eq!(server.requests(), 3);
    ChatResponse::from_value(&reply.body).unwrap();
}

#[tokio::test]
async fn retries_run_out_with_the_last_status() {
    let server = FakeTeacher::start(|_| Reply::status(502, "bad gateway")).await;
    let teacher = HttpTeacher::new(&config(&server.url()), None).unwrap();
    let err = teacher.chat(&request("q")).await.unwrap_err();
    match &err {
        TeacherError::Status {
            status,
            attempts,
            body,
            ..
        } => {
            assert_eq!((*status, *attempts), (502, 4));
            assert_eq!(body, "bad gateway");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(server.requests(), 4);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let server = FakeTeacher::start(|_| {
        Reply::status(400, r#"{"error":"maximum context length exceeded"}"#)
    })
    .await;
    let teacher = HttpTeacher::new(&config(&server.url()), None).unwrap();
    let err = teacher.chat(&request("q")).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            TeacherError::Status {
                status: 400,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(message.contains("maximum context length"), "{message}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn slow_responses_time_out_and_are_retried() {
    let server = FakeTeacher::start(|seen| match seen.index {
        0 => ok().with_delay(Duration::from_secs(3)),
        _ => ok(),
    })
    .await;
    let teacher = HttpTeacher::new(
        &TeacherConfig {
            timeout_s: 0.2,
            ..config(&server.url())
        },
        None,
    )
    .unwrap();
    let started = Instant::now();
    let reply = teacher.chat(&request("q")).await.unwrap();
    assert_eq!(reply.attempts, 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let always_slow = FakeTeacher::start(|_| ok().with_delay(Duration::from_secs(3))).await;
    let teacher = HttpTeacher::new(
        &TeacherConfig {
            timeout_s: 0.2,
            max_retries: 1,
            ..config(&always_slow.url())
        },
        None,
    )
    .unwrap();
    let err = teacher.chat(&request("q")).await.unwrap_err();
    assert!(
        matches!(
            err,
            TeacherError::Transport {
                timed_out: true,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn malformed_bodies_are_retried_and_reported() {
    let server = FakeTeacher::start(|seen| match seen.index {
        0 => Reply::status(200, r#"{"choices": [{"message": {"content": "trunc"#),
        1 => Reply::status(200, r#"{"object": "error", "message": "oops"}"#),
        _ => ok(),
    })
    .await;
    let teacher = HttpTeacher::new(&config(&server.url()), None).unwrap();
    assert_eq!(teacher.chat(&request("q")).await.unwrap().attempts, 3);

    let garbage = FakeTeacher::start(|_| Reply::status(200, "<html>proxy error</html>")).await;
    let teacher = HttpTeacher::new(
        &TeacherConfig {
            max_retries: 1,
            ..config(&garbage.url())
        },
        None,
    )
    .unwrap();
    let err = teacher.chat(&request("q")).await.unwrap_err();
    assert!(
        matches!(err, TeacherError::MalformedResponse { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("proxy error"), "{err}");
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let teacher =
        HttpTeacher::new(&config(&format!("http://{addr}/v1/chat/completions")), None).unwrap();
    let err = teacher.chat(&request("q")).await.unwrap_err();
    match &err {
        TeacherError::Transport {
            attempts,
            timed_out,
            endpoint,
            ..
        } => {
            assert_eq!((*attempts, *timed_out), (4, false));
            assert!(endpoint.contains(&addr.to_string()));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn list_models_reads_the_models_endpoint() {
    let server = FakeTeacher::start(|_| ok()).await;
    let teacher = HttpTeacher::new(&config(&server.url()), None).unwrap();
    assert_eq!(teacher.list_models().await.unwrap(), vec!["fake-teacher"]);
}
