//! `tgrpo check ...` against real components (an executor process on loopback, a private
//! nats-server, a tiny model this test writes) and dead ones: one PASS or FAIL line per
//! component, the FAIL line naming the endpoint, and the exit status.

mod support;

use std::process::{Command, Stdio};

use support::{Service, describe, executor, free_address, line_with, tgrpo, uid_base};
use tgrpo_broadcast::testing::NatsServer;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_executor_passes_a_live_executor_and_names_a_dead_one() {
    let live = free_address();
    let dead = free_address();
    let _executor = executor(&live, 1, &[]);

    let output = tgrpo(&["check", "executor", "--executor", &live]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let pass =
        line_with(&text, &format!("PASS executor {live}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        pass.contains("passing program passed") && pass.contains("failing program failed"),
        "{pass}"
    );

    let output = tgrpo(&[
        "check",
        "executor",
        "--executor",
        &live,
        "--executor",
        &dead,
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    assert!(
        line_with(&text, &format!("PASS executor {live}: ")).is_some(),
        "{text}"
    );
    let fail =
        line_with(&text, &format!("FAIL executor {dead}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(fail.contains(" — fix: "), "{fail}");
    assert!(
        fail.contains(&format!("tgrpo executor --listen {dead}")),
        "{fail}"
    );
}

#[test]
fn check_executor_without_endpoints_checks_an_in_process_sandbox() {
    let uid = format!("executor.uid_base={}", uid_base(2));
    let output = tgrpo(&[
        "check",
        "executor",
        "--set",
        &uid,
        "--set",
        "executor.slots=1",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let pass = line_with(&text, "PASS executor (in-process sandbox): ")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(pass.contains("sandboxed"), "{pass}");
}

#[test]
fn check_model_and_lora_pass_on_a_tiny_model_and_fail_on_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tgrpo_policy::tiny::write_hf_dir(&model, tgrpo_policy::Family::Qwen2, 7).unwrap();
    let model = model.display().to_string();
    let small_lora = ["--set", "lora.r=8", "--set", "lora.alpha=16"];

    let output = tgrpo(&["check", "model", "--model", &model]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let pass =
        line_with(&text, &format!("PASS model {model}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        pass.contains("tokenizer round trip ok") && pass.contains("greedy: "),
        "{pass}"
    );

    let mut args = vec!["check", "lora", "--model", &model];
    args.extend(small_lora);
    let output = tgrpo(&args);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let pass = line_with(&text, "PASS lora r=8 alpha=16 on ").unwrap_or_else(|| panic!("{text}"));
    assert!(pass.contains("identical log-probs"), "{pass}");

    let missing = dir.path().join("no-such-model").display().to_string();
    for check in ["model", "lora"] {
        let output = tgrpo(&["check", check, "--model", &missing]);
        assert!(!output.status.success(), "{}", describe(&output));
        let text = stdout(&output);
        let fail = line_with(&text, "FAIL ").unwrap_or_else(|| panic!("{text}"));
        assert!(
            fail.contains(&missing) && fail.contains(" — fix: "),
            "{fail}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_nats_passes_jetstream_and_fails_a_dead_or_plain_server() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let output = tgrpo(&["check", "nats", "--nats-url", &url]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let pass = line_with(&text, &format!("PASS nats {url}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        pass.contains("JetStream on") && pass.contains("1572864 bytes"),
        "{pass}"
    );

    let dead = format!("nats://{}", free_address());
    let output = tgrpo(&["check", "nats", "--nats-url", &dead]);
    assert!(!output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let fail = line_with(&text, &format!("FAIL nats {dead}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(fail.contains("nats-server -js"), "{fail}");

    // A server without JetStream: reachable, but no object store.
    let address = free_address();
    let port = address.rsplit(':').next().unwrap().to_string();
    let mut plain = Command::new("/usr/sbin/nats-server")
        .args(["-a", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server at /usr/sbin/nats-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let plain_url = format!("nats://{address}");
    let output = tgrpo(&["check", "nats", "--nats-url", &plain_url]);
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(!output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let fail =
        line_with(&text, &format!("FAIL nats {plain_url}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(fail.contains("JetStream disabled"), "{fail}");
}

#[test]
fn check_teacher_names_a_dead_teacher() {
    let url = format!("http://{}/v1/chat/completions", free_address());
    let output = tgrpo(&[
        "check",
        "teacher",
        "--teacher-url",
        &url,
        "--teacher-max-retries",
        "0",
        "--teacher-timeout-s",
        "5",
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let fail =
        line_with(&text, &format!("FAIL teacher {url}: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(fail.contains(" — fix: "), "{fail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_all_runs_every_check_from_one_config() {
    let nats = NatsServer::start().await.unwrap();
    let grpc = free_address();
    let _executor: Service = executor(&grpc, 3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tgrpo_policy::tiny::write_hf_dir(&model, tgrpo_policy::Family::Qwen2, 7).unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nsource = {model:?}\n\n[lora]\nr = 8\nalpha = 16.0\n\n[synthesis]\nteacher = \"reference\"\n\n\
             [rollout]\nexecutor_endpoints = [{grpc:?}]\n\n[broadcast]\nurl = {url:?}\n",
            model = model.display().to_string(),
            url = nats.url(),
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let output = tgrpo(&["check", "all", "--config", &config]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let verdicts: Vec<&str> = text
        .lines()
        .filter(|line| {
            ["PASS ", "FAIL ", "SKIP "]
                .iter()
                .any(|word| line.starts_with(word))
        })
        .collect();
    let names: Vec<String> = verdicts
        .iter()
        .map(|line| line.split(": ").next().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            format!("PASS executor {grpc}"),
            format!("PASS model {}", model.display()),
            format!("PASS lora r=8 alpha=16 on {}", model.display()),
            format!("PASS nats {}", nats.url()),
            "SKIP teacher".to_string(),
        ],
        "{text}"
    );
}
