//! `tgrpo score` end to end (in-process pool, and remote against `tgrpo executor`,
//! which must then stop cleanly on SIGTERM).

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TGRPO: &str = env!("CARGO_BIN_EXE_tgrpo");

/// A uid range of this test process's own (tests run in parallel).
fn uid_base(offset: u32) -> String {
    // Disjoint from the executor crate's test ranges (1M-52M).
    (100_000_000 + (std::process::id() % 50_000) * 256 + offset * 64).to_string()
}

const INPUT: &str = r#"{"id": "ok", "code": "def f(x):\n    return x + 1\n", "tests": ["assert f(1) == 2", "assert f(2) == 3"]}
{"id": "wrong", "code": "def f(x):\n    return x\n", "tests": ["assert f(1) == 2", "assert f(2) == 2"]}
this is not json
{"id": "he", "code": "def add(a, b):\n    return a + b\n", "tests": ["def check(candidate):\n    assert candidate(2, 3) == 5\n"], "format": "humaneval", "entry_point": "add"}

{"id": "slow", "code": "while True:\n    pass\n", "tests": ["assert True"], "timeout_s": 0.5}
{"id": "syntax", "code": "def f(:\n", "tests": ["assert f(1) == 1"]}
{"id": "no-tests", "code": "x = 1"}
"#;

fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("samples.jsonl");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(INPUT.as_bytes())
        .unwrap();
    path
}

fn check_output(output: &std::path::Path, stdout: &str) {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|line| {
            (
                line["id"].as_str().unwrap(),
                line["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ok", "passed"),
            ("wrong", "failed"),
            ("line-3", "error"),
            ("he", "passed"),
            ("slow", "timeout"),
            ("syntax", "error"),
            ("no-tests", "error"),
        ]
    );
    assert!(
        lines[2]["detail"]
            .as_str()
            .unwrap()
            .starts_with("input line 3:")
    );
    assert!(
        lines[6]["detail"]
            .as_str()
            .unwrap()
            .starts_with("input line 8:")
    );
    assert_eq!(lines[0]["tests_passed"], 2);
    assert_eq!(lines[0]["reward"], 1.0);
    assert_eq!(lines[1]["tests_passed"], 1);
    assert_eq!(lines[1]["tests_total"], 2);
    for key in [
        "id",
        "verdict",
        "tests_passed",
        "tests_total",
        "reward",
        "duration_ms",
        "detail",
    ] {
        assert!(lines[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(
        stdout.trim_end().lines().last(),
        Some("2 passed, 5 failed"),
        "{stdout}"
    );
}

#[test]
fn score_with_an_in_process_pool() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let output = dir.path().join("verdicts.jsonl");
    let result = Command::new(TGRPO)
        .args([
            "score",
            "--slots",
            "2",
            "--uid-base",
            &uid_base(0),
            "--input",
        ])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    check_output(&output, &stdout);
}

#[test]
fn score_against_a_remote_executor_that_then_drains_on_sigterm() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let mut executor = Command::new(TGRPO)
        .args([
            "executor",
            "--slots",
            "2",
            "--uid-base",
            &uid_base(1),
            "--listen",
            &address,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&address).is_err() {
        assert!(
            executor.try_wait().unwrap().is_none(),
            "the executor exited while starting"
        );
        assert!(Instant::now() < deadline, "the executor never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let output = dir.path().join("verdicts.jsonl");
    let result = Command::new(TGRPO)
        .args(["score", "--endpoints", &address, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    check_output(&output, &stdout);

    let terminated = Command::new("kill")
        .args(["-TERM", &executor.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = executor.try_wait().unwrap() {
            assert!(status.success(), "the executor exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the executor did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
