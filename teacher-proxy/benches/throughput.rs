//! Client throughput against a fake OpenAI-compatible teacher with a fixed 50 ms latency,
//! at concurrency 32: the ideal is 32 / 0.05 s = 640 requests/s, the target ≥ 90% of it.
//! Also the client's own CPU time per request (getrusage of this process; the fake
//! teacher runs in a child process so its CPU is not counted).
//!
//! `cargo bench -p tgrpo-teacher` prints a one-shot report (throughput, ratio to the ideal,
//! CPU µs per request), then criterion's measurement of batches of 320 requests.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures::StreamExt;
use nix::sys::resource::{UsageWho, getrusage};
use tgrpo_teacher::parse::split_thinking;
use tgrpo_teacher::wire::{ChatMessage, ChatRequest, ChatResponse, ChatTemplateKwargs};
use tgrpo_teacher::{HttpTeacher, Teacher, TeacherConfig};

const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: usize = 32;
const SERVE_ENV: &str = "TGRPO_BENCH_FAKE_TEACHER";

fn main() {
    if std::env::var_os(SERVE_ENV).is_some() {
        serve_fake_teacher();
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SERVE_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake teacher");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("LISTENING ")
        .expect("the fake's address")
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = TeacherConfig {
        api_url: format!("http://{addr}/v1/chat/completions"),
        model_name: "fake-teacher".into(),
        max_concurrent_requests: CONCURRENCY,
        timeout_s: 10.0,
        cache_dir: None,
        ..TeacherConfig::default()
    };
    let teacher = HttpTeacher::new(&config, None).unwrap();
    runtime.block_on(batch(&teacher, 2 * CONCURRENCY)); // warm the connection pool

    let requests = 3_200;
    let cpu_before = cpu_time();
    let started = Instant::now();
    runtime.block_on(batch(&teacher, requests));
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let ideal = CONCURRENCY as f64 / LATENCY.as_secs_f64();
    let throughput = requests as f64 / wall.as_secs_f64();
    println!(
        "teacher client: {requests} requests, concurrency {CONCURRENCY}, fixed latency {} ms",
        LATENCY.as_millis()
    );
    println!(
        "throughput: {throughput:.1} requests/s; ideal {ideal:.0}; ratio {:.3} (target >= 0.900)",
        throughput / ideal
    );
    println!(
        "client CPU: {:.1} us per request (user+sys {:.3} s over {:.3} s wall)",
        cpu.as_secs_f64() * 1e6 / requests as f64,
        cpu.as_secs_f64(),
        wall.as_secs_f64()
    );

    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .configure_from_args();
    let mut group = criterion.benchmark_group("teacher_client");
    let per_batch = 10 * CONCURRENCY;
    group.throughput(Throughput::Elements(per_batch as u64));
    group.bench_function("chat_50ms_latency_concurrency_32", |bencher| {
        bencher.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                runtime.block_on(batch(&teacher, per_batch));
            }
            started.elapsed()
        });
    });
    group.finish();
    criterion.final_summary();

    drop(child.stdin.take());
    let _ = child.wait();
}

/// `count` requests through the client, as many at once as it allows, each parsed the way
/// the trace pipeline parses it.
async fn batch(teacher: &HttpTeacher, count: usize) {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let reply = teacher.chat(&request(i)).await.expect("the fake answers");
            let response = ChatResponse::from_value(&reply.body).unwrap();
            let message = &response.first().message;
            let split = split_thinking(
                message.content.as_deref(),
                message.reasoning_content.as_deref(),
            );
            assert!(split.thinking.is_some());
        })
        .buffer_unordered(count)
        .collect::<Vec<()>>()
        .await;
}

fn request(i: usize) -> ChatRequest {
    ChatRequest {
        model: "fake-teacher".into(),
        messages: vec![ChatMessage::user(format!(
            "Write a function to add two numbers (request {i}).\nYour code should pass these tests:\n\nassert add(1, 2) == 3\n"
        ))],
        temperature: 0.7,
        top_p: 0.8,
        presence_penalty: 1.5,
        max_tokens: 2048,
        stream: false,
        seed: None,
        chat_template_kwargs: Some(ChatTemplateKwargs {
            enable_thinking: true,
        }),
    }
}

fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let to_duration = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    to_duration(usage.user_time()) + to_duration(usage.system_time())
}

/// The child: a fake vLLM answering every request after exactly `LATENCY`, with a
/// realistic body (reasoning + fenced code + usage), until its stdin closes.
fn serve_fake_teacher() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let fake = support::FakeTeacher::start(|_| {
            support::Reply::completion(
                Some("The function returns the sum of its two arguments, so a + b suffices."),
                "```python\ndef add(a, b):\n    return a + b\n```",
            )
            .with_delay(LATENCY)
        })
        .await;
        println!("LISTENING {}", fake.addr);
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .unwrap();
    });
}
